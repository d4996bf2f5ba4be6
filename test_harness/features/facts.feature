@NERVE-4004 @NERVE-4006
Feature: Facts are append-only, typed and validated; gates evaluate over them

  Background:
    Given a run of a flow declaring fact schema "urn:demo:score" requiring a number "score"

  Scenario: A valid fact is stored with its seq; an invalid one is 400 and not stored
    When I post a fact of type "score" with {"score": 0.9}
    And I post a fact of type "score" with {"score": "high"}
    Then the first answer is 201 with seq 0 and the second is 400 INVALID_PARAMS
    And the run has exactly 1 fact

  Scenario: An unregistered schema_uri is refused
    When I post a fact with schema_uri "urn:nobody"
    Then the answer is 400 with code INVALID_PARAMS

  Scenario: Facts can be filtered by type, step and seq, and queried per flow
    When I post facts of types "a", "b", "a"
    Then filtering by type "a" gives seqs 0 and 2
    And since_seq 0 gives seqs 1 and 2
    And the flow's facts include all 3

  Scenario: Facts written by 8 concurrent writers come back complete in one order
    When 8 writers post 25 facts each at once
    Then the run has 200 facts with seqs 0 to 199 and no duplicates

  Scenario: The run's fact stream resumes after Last-Event-ID, over real HTTP
    Then on a Granian server, the fact stream from Last-Event-ID 0 starts at seq 1

  Scenario: A gate passes over the facts and records what it saw
    When I post a fact of type "score" with {"score": 0.9}
    And I run gate_eval "by_type.score[?score > `0.5`] | length(@) > `0`"
    Then the gate passed and saw 1 fact

  Scenario: A waiting gate passes when the fact arrives before its deadline
    When I start gate_eval "by_type.go[0].ok" waiting 5000 ms
    And I post a fact of type "go" with {"ok": true} after 300 ms
    Then the gate passed and saw 1 fact

  Scenario: A gate that never passes ends with passed false at its deadline
    When I run gate_eval "by_type.nothing" waiting 200 ms
    Then the gate failed and saw 0 facts

  Scenario: strict_replay re-evaluates the gate over the recorded facts
    When I post a fact of type "score" with {"score": 0.9}
    And I run gate_eval "by_type.score[0].score"
    And I strict-replay that gate
    Then the replayed gate's end equals the recorded one

  Scenario: An invalid JMESPath expression is refused before the step exists
    When I submit gate_eval "by_type.[["
    Then the answer is 400 with code INVALID_PARAMS

  @POLICY-3020
  Scenario: A fact schema with a lookahead pattern is refused naming the schema
    When I try to declare fact schema "urn:demo:name" whose "name" matches "(?=x)x"
    Then the answer is 400 with code INVALID_PARAMS
    And the refusal names field "config.fact_schemas.urn:demo:name" at path "/properties/name/pattern"

  @POLICY-3020
  Scenario: A catastrophic pattern in a fact schema is evaluated without stalling
    When I try to declare fact schema "urn:demo:name" whose "name" matches "(a|aa)+$"
    And I post a "name" fact whose "name" is 50000 "a" followed by "!"
    Then the answer is 400 with code INVALID_PARAMS
    And the run has exactly 0 fact

  @NERVE-4007 @POLICY-3030
  Scenario: A gate whose value doubles at each stage is refused without being built
    When I post a fact of type "score" with {"score": 0.9}
    And I run gate_eval "by_type" followed by 20 stages of "|[@,@]" while tracing memory
    Then the gate ends with OUTPUT_TOO_LARGE {"field": "output.value", "reason": "size", "limit_bytes": 1048576}
    And no frame of the gate is larger than 4096 bytes
    And the server allocated less than 16 MB while the gate ran

  @NERVE-4007
  Scenario: A gate whose work doubles at each stage stops at its work budget
    When I post a fact of type "score" with {"score": 0.9}
    And I run gate_eval "by_type" followed by 20 stages of "|[@,@]" and 20 stages of "[]"
    Then the gate ends with OUTPUT_TOO_LARGE {"field": "input.expression", "reason": "work", "limit_work": 1000000}
    And no frame of the gate is larger than 4096 bytes

  @NERVE-4007
  Scenario Outline: A gate expression nested too deeply is refused before the step exists
    When I submit gate_eval "<prefix>" repeated <n> times, then "a", then "<suffix>" repeated <n> times
    Then the answer is 400 INVALID_PARAMS naming input.expression with limit_depth 64
    And the run has no steps

    Examples:
      | prefix | suffix | n    |
      | (      | )      | 1000 |
      | [      | ]      | 1000 |
      | !      |        | 1500 |
      | a\|    |        | 1200 |
      | [a,    | ]      | 100  |
