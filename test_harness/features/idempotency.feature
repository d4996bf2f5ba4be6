@NERVE-4003 @NERVE-4000
Feature: Steps are idempotent within their Run by client_token

  Background:
    Given a record run on the mock engine

  Scenario: Reusing a client_token returns the same step
    When I submit an llm_call with client_token "t-1" and prompt "alpha"
    And I submit an llm_call with client_token "t-1" and prompt "alpha"
    Then the answers are 201 then 200 with the same step_id
    And the run has 1 step

  Scenario: Reusing a client_token with a different input is a conflict
    When I submit an llm_call with client_token "t-1" and prompt "alpha"
    And I submit an llm_call with client_token "t-1" and prompt "beta"
    Then the last answer is 409 with code CONFLICT
    And the run has 1 step

  Scenario: The same client_token in another run is another step
    When I submit an llm_call with client_token "t-1" and prompt "alpha"
    And I submit the same llm_call in a second record run
    Then the two step_ids differ
