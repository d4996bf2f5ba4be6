@OBS-8010 @OBS-8021
Feature: An operator sees a request, its Step and its engine call
  With tracing on, one demo-like Step is one trace from the HTTP request that admitted it
  to the engine call; with JSON logs, a failing request is found by its correlation id.

  @OBS-8010 @OBS-8011 @OBS-8012
  Scenario: An llm_call is one trace from the request to the engine
    Given a traced mock server
    When I submit an llm_call of 3 tokens with a caller's traceparent and read it to the end
    Then the trace goes from the caller to "POST /v1/runs/{run_id}/steps" to "step llm_call" to "text_completion mock:echo-1"
    And the engine call used as many output tokens as the Step's tokens_out

  @OBS-8021 @OBS-8024
  Scenario: A refused request is found in the JSON log by its correlation id
    Given a mock server with a bearer token, logging JSON
    When I read run "run_nope" with a wrong token and correlation id "cid-bdd-401"
    Then the log has one request line for "cid-bdd-401" with route "/v1/runs/{run_id}" and status 401
    And neither token appears in the log

  @OBS-8022 @OBS-8023
  Scenario: A failing Step logs its transitions under the request that admitted it
    Given a mock server with a failing tool, logging JSON at debug
    When I call the failing tool with correlation id "cid-bdd-step"
    Then the Step's lines under "cid-bdd-step" are admitted, running and terminal failed with ENGINE_ERROR
