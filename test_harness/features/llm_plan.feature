@NERVE-4010 @NERVE-4011
Feature: llm_plan turns a prompt and a tool menu into typed tool suggestions

  Background:
    Given a flow declaring tools "count" and "digest" with JSON Schemas

  Scenario: Each intent of a plan becomes one valid tool_suggest frame
    Given the model answers {"intents": [{"tool": "count", "args": {"text": "a b"}}, {"tool": "digest", "args": {"text": "x"}}]}
    When I plan with the menu "count,digest"
    Then the frames are started, tokens, 2 tool_suggest and end
    And suggestion 0 is a valid call of "count" with {"text": "a b"}
    And the end output lists 2 intents of which 2 are valid

  Scenario: Invalid suggestions are reported as typed frames, never as valid ones
    Given the model answers {"intents": [{"tool": "count", "args": {"text": 5}}, {"tool": "rm", "args": {}}]}
    When I plan with the menu "count"
    Then suggestion 0 is invalid with INVALID_TOOL_ARGS reason "schema"
    And suggestion 1 is invalid with INVALID_TOOL_ARGS reason "not_on_menu"
    And the end output lists 2 intents of which 0 are valid

  Scenario: The engine is constrained to the menu's intents schema and shown the menu
    Given the default mock engine
    When I plan with the menu "digest"
    Then the engine was asked for JSON with one intent shape per menu tool: "digest"
    And the prompt the engine saw starts with the tool menu
    And every suggestion of the plan is valid

  Scenario: Output that is not an intents envelope ends the step with CONTRACT_VIOLATION
    Given the model answers {"plan": "count the words"}
    When I plan with the menu "count"
    Then the stream ends with error CONTRACT_VIOLATION reason "schema"

  Scenario: A menu naming a tool the flow does not declare is refused
    Given the default mock engine
    When I plan with the menu "count,rm"
    Then the answer is 400 with code INVALID_PARAMS
    And the engine received 0 requests

  Scenario: A menu tool denied by the run's policy is refused before any compute
    Given the default mock engine
    When I plan with the menu "count,digest" in a run whose policy denies tool "digest"
    Then the answer is 403 with code POLICY_DENIED
    And the engine received 0 requests

  Scenario: A plan replays byte for byte, and replay asks the engine nothing
    Given the default mock engine
    When I plan with the menu "count,digest"
    And I replay the plan in mode replay and in mode strict_replay
    Then both replays equal the recording frame for frame
    And the engine received 2 requests

  Scenario: A valid suggestion runs as a tool_call
    Given the model answers {"intents": [{"tool": "count", "args": {"text": "one two three"}}]}
    When I plan with the menu "count"
    And I run suggestion 0 as a tool_call
    Then the tool_call ends with output words 3
