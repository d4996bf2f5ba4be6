@NERVE-4021 @NERVE-4022 @NERVE-4023 @NERVE-4012 @NERVE-4025
Feature: Record, replay and strict_replay
  A recorded run is served again by replay without compute, and re-executed by
  strict_replay, which must match the recording byte for byte.

  Background:
    Given a recorded run of 3 llm_call steps on the mock engine

  Scenario: replay serves the recording without touching the engine
    When I replay the run in mode replay
    Then every token stream equals the recording byte for byte
    And the engines received 0 requests during the replay

  Scenario: replay serves the recording by reference, appending no frame
    When I replay the run in mode replay
    Then each replayed step was answered finished, with its recorded status
    And every replayed stream equals a read-back of its recorded step byte for byte
    And the replay added no row to the event log

  Scenario: strict_replay re-executes and matches byte for byte
    When I replay the run in mode strict_replay
    Then every token stream equals the recording byte for byte
    And the engines received 3 requests during the replay

  Scenario: A replay run with another seed is refused at creation
    When I create a strict_replay run with seed 999
    Then the answer is 409 DETERMINISM_INPUTS_DIFFER listing seed

  Scenario: strict_replay with changed params is refused before started
    When I create a strict_replay run
    And I submit the first step with temperature 0.5
    Then the answer is 409 DETERMINISM_INPUTS_DIFFER listing params_hash
    And the refusal names params temperature from 0.0 to 0.5
    And no step was stored in the replay run

  Scenario: strict_replay with several changed params names each of them
    When I create a strict_replay run
    And I submit the first step with temperature 0.5 and top_p 0.9
    Then the answer is 409 DETERMINISM_INPUTS_DIFFER listing params_hash
    And the refusal names params temperature from 0.0 to 0.5, top_p from 0.95 to 0.9

  Scenario: strict_replay after an engine environment change names the variable
    When the server restarts with the pool environment GGML_SCHED_MAX_COPIES="1"
    And I create a strict_replay run
    And I submit the first step unchanged
    Then the answer is 409 DETERMINISM_INPUTS_DIFFER listing engine_build
    And the refusal names setting env.GGML_SCHED_MAX_COPIES from null to "1"

  Scenario: A replayed step whose input differs is NONDETERMINISM
    When I create a replay run
    And I submit the first step with prompt "something else"
    Then the answer is 409 NONDETERMINISM naming field input.prompt

  Scenario: A client_token missing from the recording is NONDETERMINISM
    When I create a replay run
    And I submit a step with client_token "never-recorded"
    Then the answer is 409 NONDETERMINISM naming field client_token

  Scenario: strict_replay after a model change is refused before started
    When the server restarts with a different model hash
    And I create a strict_replay run
    And I submit the first step unchanged
    Then the answer is 409 DETERMINISM_INPUTS_DIFFER listing model_hash

  Scenario: A divergent engine ends strict_replay with REPLAY_DIVERGED
    When the engine starts producing different tokens
    And I replay the run in mode strict_replay
    Then the first step ends with error REPLAY_DIVERGED at index 0 with expected and actual
