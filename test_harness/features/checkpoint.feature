@NERVE-4005
Feature: Checkpoints snapshot interpreter state; forks share history up to them

  Background:
    Given a record run with an llm_call "a", a fact, and a checkpoint step, then an llm_call "b"

  @NERVE-4008
  Scenario: A checkpoint step logs a checkpoint frame and is listed with the server's cursor
    Then the checkpoint step's frames are started, checkpoint, end
    And GET checkpoints lists it with steps high-water 1, unfinished [1] and facts high-water 0

  Scenario: The same snapshot at the same cursor is the same checkpoint
    When I post the checkpoint {"pc": 7} twice
    Then the answers are 201 then 200 with the same checkpoint_id

  Scenario: Checkpoints survive a restart
    When the server restarts on the same data directory
    Then GET checkpoints still lists the checkpoint

  Scenario: A fork shares the parent's history up to the checkpoint and diverges after it
    When I fork a run from the checkpoint
    Then the fork's lineage names the parent and the checkpoint, and the parent lists the fork
    And the fork has the parent's fact up to the checkpoint only
    And submitting "a" in the fork serves the parent's recorded frames without the engine
    And submitting a new "c" in the fork runs on the engine
    And submitting "b", recorded after the checkpoint, in the fork runs on the engine
    And the parent run is unchanged

  Scenario: A fork from another flow's checkpoint is refused
    When I fork a run of another flow from the checkpoint
    Then the answer is 400 with code INVALID_PARAMS

  @NERVE-4008 @sqlite_only
  Scenario: A checkpoint written before schema v6 (listing steps_done) still forks as it did
    When a schema v5 server records the same history, is upgraded, and I fork from its checkpoint
    Then the old checkpoint's cursor still lists steps_done ["a"] in a schema v6 store
    And submitting "a" in the fork serves the parent's recorded frames without the engine
    And submitting "b", recorded after the checkpoint, in the fork runs on the engine

  @NERVE-4008
  Scenario: A checkpoint's cursor does not grow with the run
    When I checkpoint a new run after 3 finished steps and again after 60
    Then the cursors are {"steps_high_water": 2, "steps_unfinished": [], "facts_high_water": -1} and {"steps_high_water": 59, "steps_unfinished": [], "facts_high_water": -1} with zero usage
    And the two cursors differ in length by 1 byte

  @NERVE-4008
  Scenario: Listing checkpoints pages with a Link to the next page, each exactly once
    When I post 7 more checkpoints to the run
    And I follow GET checkpoints with limit 3 through its Link headers
    Then the pages hold 3, 3 and 2 checkpoints, all 8 in creation order, each once
    And the last page has no Link header

  @NERVE-4008
  Scenario Outline: A bad page request is refused naming the parameter
    When I GET checkpoints with <query>
    Then the page request is refused with 400 INVALID_PARAMS naming field "<field>"

    Examples:
      | query                   | field |
      | limit=0                 | limit |
      | limit=1001              | limit |
      | after=ckp_doesnotexist  | after |

  @POLICY-3030
  Scenario: A snapshot over the server's bound is refused before anything is stored
    When on a server recording values of at most 4096 bytes I post a 5000-byte snapshot as a checkpoint and as a checkpoint step
    Then both answers are 400 INVALID_PARAMS naming "snapshot" and "input.snapshot" with limit_bytes 4096
    And that run has no checkpoint and no step
