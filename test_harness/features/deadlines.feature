@POLICY-3005 @NERVE-4020
Feature: The wall-clock budget holds for every Step type, and the error frame carries provenance

  Every scenario runs on the fake clock: time moves only when the scenario moves it, so a
  500 ms budget is exactly 500 ms and nothing waits in real time.

  Background:
    Given an orchestrator on the fake clock whose tool "slow" never answers
    And a record run with a sandbox allowing write under "out"

  Scenario: A tool_call whose executor outlives its 500 ms budget ends DEADLINE_EXCEEDED
    When I call tool "slow" with a step budget of 500 ms
    And the fake clock moves 499 ms
    Then the step is still running
    When the fake clock moves 1 ms
    Then the step ends DEADLINE_EXCEEDED after the frames "started error"
    And its error frame and the step carry the provenance of "slow" after 500 ms

  Scenario: A gate_eval waiting 3000 ms with a 500 ms budget ends DEADLINE_EXCEEDED at 500 ms
    When I run gate_eval "by_type.go[0].ok" waiting 3000 ms with a step budget of 500 ms
    And the fake clock moves 499 ms
    Then the step is still running
    When the fake clock moves 1 ms
    Then the step ends DEADLINE_EXCEEDED after the frames "started error"
    And its error frame and the step carry the provenance of "gate" after 500 ms

  Scenario: An fs_op whose run's wall budget runs out before it starts ends DEADLINE_EXCEEDED
    Given the run's wall budget is 1000 ms
    When the fake clock moves 999 ms
    And I submit fs_op write "out/late.txt" and the fake clock moves 1 ms before it starts
    Then the step ends DEADLINE_EXCEEDED after the frames "error"
    And its error frame and the step carry the provenance of "fs" after 1 ms
    And the sandbox holds no file

  Scenario: A checkpoint whose own budget runs out before it starts ends DEADLINE_EXCEEDED
    When I submit a checkpoint with a step budget of 500 ms and the fake clock moves 500 ms before it starts
    Then the step ends DEADLINE_EXCEEDED after the frames "error"
    And its error frame and the step carry the provenance of "checkpoint" after 500 ms
    And the run has no checkpoint

  Scenario: A Step of any type is refused once its run's wall budget is spent
    Given the run's wall budget is 1000 ms
    When the fake clock moves 1000 ms
    And I submit a checkpoint
    Then the answer is BUDGET_EXCEEDED {"budget": "max_wall_ms"} and the run has no steps
