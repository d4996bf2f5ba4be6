@POLICY-3003 @POLICY-3000 @NERVE-4002
Feature: Policy is evaluated before execution and budgets are hard caps

  Scenario: A run records its mode, seed, budgets and policies
    Given a flow on the mock engine
    When I create a record run with seed 42, a step budget and a policy
    Then the run shows mode record, seed 42, its budgets, policy, pool_policy and fs_policy
    And its policy_hash is the content hash of the policy

  Scenario: A denied model is refused before any compute and nothing is stored
    Given a flow on the mock engine
    When I create a record run whose policy denies model "mock:echo-1"
    And I submit an llm_call on model "mock:echo-1"
    Then the answer is 403 with code POLICY_DENIED
    And the engines received no request and the run has no step

  Scenario: A denied step type is refused before any compute
    Given a flow on the mock engine
    When I create a record run whose policy allows only step type "tool_call"
    And I submit an llm_call on model "mock:echo-1"
    Then the answer is 403 with code POLICY_DENIED

  Scenario: An output budget ends the step with BUDGET_EXCEEDED, never a silent truncation
    Given a flow on the mock engine
    When I create a record run with a run budget of 5 output tokens
    And I run an llm_call that would produce 40 tokens
    Then the stream ends with error BUDGET_EXCEEDED after 5 token frames

  Scenario: A wall-clock budget ends the step with DEADLINE_EXCEEDED
    Given a flow on a mock engine at 100 tokens per second
    When I create a record run
    And I run an llm_call with a step max_wall_ms of 100
    Then the stream ends with error DEADLINE_EXCEEDED
