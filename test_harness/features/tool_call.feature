@NERVE-4011 @POLICY-3002
Feature: tool_call runs operator-configured executors with validated arguments

  Background:
    Given a flow declaring tool "count" on executor "wc" and tool "boom" on a failing executor

  Scenario: A valid call runs the executor and records its result
    When I call tool "count" with {"text": "one two three\nfour"}
    Then the step ends with output {"lines": 1, "words": 4, "chars": 18, "bytes": 18} from "wc"

  Scenario: Invalid arguments are refused before the executor runs
    When I call tool "count" with {"text": 5, "extra": true}
    Then the answer is 400 with code INVALID_TOOL_ARGS listing the schema errors
    And executor "wc" was called 0 times

  Scenario: A tool the flow does not declare is refused
    When I call tool "rm" with {}
    Then the answer is 400 with code INVALID_PARAMS

  Scenario: Replays serve the recorded result and never run the tool again
    When I call tool "count" with {"text": "a b"}
    And I replay that step in mode replay and in mode strict_replay
    Then both replays equal the recording
    And executor "wc" was called 1 times

  Scenario: A failing executor's breaker opens and further calls are refused
    When I call tool "boom" 3 times
    Then each ends with ENGINE_ERROR and the third has an escalation closed to open
    And calling tool "boom" again is refused with 503 CIRCUIT_OPEN

  Scenario: A tool denied by the run's policy is refused before it runs
    When I call tool "count" in a run whose policy denies it
    Then the answer is 403 with code POLICY_DENIED

  @POLICY-3020
  Scenario: A tool schema whose pattern needs a backreference is refused naming the field
    When I try to create a flow whose tool "grep" requires "q" to match "(a)\\1"
    Then the answer is 400 with code INVALID_PARAMS
    And the refusal names field "tools[0].parameters" at path "/properties/q/pattern"

  @POLICY-3020
  Scenario: A catastrophic pattern in a tool schema is evaluated without stalling
    When I try to create a flow whose tool "grep" requires "q" to match "^(a+)+$"
    And I call tool "grep" giving "q" 50000 "a" followed by "!"
    Then the answer is 400 with code INVALID_TOOL_ARGS

  @POLICY-3030
  Scenario: A tool whose output is over the server's bound ends with OUTPUT_TOO_LARGE
    When on a server recording values of at most 2048 bytes a tool prints 4096 bytes
    Then the step ends with OUTPUT_TOO_LARGE {"field": "output", "reason": "size", "limit_bytes": 2048}
    And the tool ran once and no stored frame of the step is larger than 1024 bytes
