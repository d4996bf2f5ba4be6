@REC-7010 @REC-7011
Feature: Portable recordings: export, import and replay anywhere
  A Run leaves the server as a self-verifying JSON Lines file with deterministic bytes,
  and enters any other server, of any tenant, with or without an engine, as a record Run
  that a replay serves byte for byte.

  Background:
    Given a mock-engine server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"
    And tenant "alpha" recorded a run of 3 llm_call steps, a fact and a checkpoint

  @REC-7007 @REC-7000 @REC-7004
  Scenario: Exporting a run twice gives the same bytes, its lines in the format's order
    When tenant "alpha" exports the run twice
    Then both exports are the same bytes of application/x-ndjson
    And the lines are a header, the flow, 3 steps, 1 fact, 1 checkpoint and the trailer

  @REC-7012 @REC-7013
  Scenario: A recording imported into a server with no engine replays byte for byte
    Given tenant "alpha" exported the run
    When tenant "gamma" imports it into a fresh server that has no engine
    And tenant "gamma" replays the imported run with the recorded client tokens
    Then every replayed stream equals the original stream byte for byte
    And the imported run holds the recorded fact and checkpoint

  @REC-7013
  Scenario: The same recording imported twice makes two runs that do not collide
    Given tenant "alpha" exported the run
    When tenant "beta" imports it twice
    Then both imports answer 201 with two distinct run ids, the same flow and 3 steps
    And a replay of each imported run serves the recording

  @REC-7012
  Scenario: A changed prompt in a replay of an imported run names the differing field
    Given tenant "alpha" exported the run
    When tenant "beta" imports it
    And tenant "beta" replays the first step with another prompt
    Then the answer is 409 NONDETERMINISM with field "input.prompt"

  @REC-7010
  Scenario: Another tenant's run exports exactly like an unknown one
    When tenant "beta" exports alpha's run and an unknown run
    Then both answer 404 NOT_FOUND alike but for the run id

  @REC-7006
  Scenario Outline: A tampered or truncated recording is refused naming the line, and nothing is stored
    Given tenant "alpha" exported the run
    When tenant "beta" imports the recording <changed>
    Then the import answers 400 INVALID_PARAMS naming line <line> and reason <reason>
    And the database holds no more runs, steps or frames than before

    Examples:
      | changed                                   | line | reason     |
      | with one byte of the third line flipped   | 3    | line_hash  |
      | without its trailer                       | 8    | truncated  |
      | cut in the middle of its fourth line      | 4    | malformed  |
      | with the second step line removed         | 4    | order      |
      | with the first fact's data changed        | 6    | line_hash  |

  @REC-7011
  Scenario: Only a record run's recording is imported
    Given tenant "alpha" replayed the run and exported the replay
    When tenant "beta" imports that recording
    Then the import answers 400 INVALID_PARAMS naming line 1 and field "run.mode"
