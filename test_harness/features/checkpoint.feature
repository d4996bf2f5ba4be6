@NERVE-4005
Feature: Checkpoints snapshot interpreter state; forks share history up to them

  Background:
    Given a record run with an llm_call "a", a fact, and a checkpoint step, then an llm_call "b"

  Scenario: A checkpoint step logs a checkpoint frame and is listed with the server's cursor
    Then the checkpoint step's frames are started, checkpoint, end
    And GET checkpoints lists it with steps_done ["a"] and facts high-water 0

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
    And the parent run is unchanged

  Scenario: A fork from another flow's checkpoint is refused
    When I fork a run of another flow from the checkpoint
    Then the answer is 400 with code INVALID_PARAMS
