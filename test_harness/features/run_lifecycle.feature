@NERVE-4100 @NERVE-4103
Feature: A Run's lifecycle: its run stream, its close, and retries of interrupted Steps
  An interpreter reads every frame of every Step of its Run on one stream, resumes it
  after a disconnect, closes the Run with a final status and a provenance summary, and
  retries a Step a crash interrupted under the same client_token.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"

  @NERVE-4100 @NERVE-4101
  Scenario: The run stream carries every frame of every step in commit order, then run_end
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    And tenant "alpha" reads the run stream
    Then the run stream holds each step's frames with the bytes of its own stream, at positions 0 onwards
    And the run stream ends with a run_end event carrying status "completed" and the run's summary

  @NERVE-4100 @NERVE-4101
  Scenario: The run stream resumes after Last-Event-ID, and a re-read after run_end is 204
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    And tenant "alpha" reads the run stream
    And tenant "alpha" reads the run stream again after position 5
    Then the resumed stream is the first read's events after position 5
    And reading the run stream after its run_end event answers 204 with no body

  @NERVE-4100
  Scenario: The run stream follows steps submitted while it is open
    When tenant "alpha" opens the run stream of a new run
    And tenant "alpha" runs 2 steps to their end in that run while the stream is open, then closes it "completed"
    Then the open run stream received both steps' frames and a run_end event

  @NERVE-4100 @NERVE-4051
  Scenario: Another tenant's run stream answers exactly like an unknown run
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    Then tenant "beta" reading alpha's run stream gets the same 404 NOT_FOUND as for an unknown run

  @NERVE-4100
  Scenario: A malformed Last-Event-ID on the run stream is refused naming the header
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    Then reading the run stream with Last-Event-ID "12a" is refused with 400 INVALID_PARAMS naming field "Last-Event-ID"

  @NERVE-4103 @NERVE-4104
  Scenario: Closing a run completed gives its final status and provenance summary, idempotently
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    Then the run is "completed" with a closed_at and a summary of 2 succeeded llm_call steps on engine "mock@1"
    And closing it "completed" again answers 200 with the same run
    And closing it "failed" answers 409 CONFLICT naming field "status"
    And a new step in the closed run is refused with 409 CONFLICT naming field "run_id"
    And re-submitting a token the closed run has answers 200 with its step

  @NERVE-4103 @NERVE-4104
  Scenario: A run with a live step cannot be completed, and closing it cancelled cancels the step
    When tenant "alpha" starts a long step in a new run on a slow engine
    Then closing the run "completed" answers 409 CONFLICT naming field "status" with 1 live step
    When tenant "alpha" closes the run "cancelled"
    Then the long step ends CANCELLED with message "run cancelled"
    And the run is "cancelled" with a summary of 1 cancelled llm_call step

  @NERVE-4105 @NERVE-4106
  Scenario: A step interrupted by a shutdown is retried as a new attempt, and replay serves the attempt that finished
    When tenant "alpha" starts a long step in a new run on a slow engine
    And the server stops while the step runs and starts again on the same data
    Then the step is interrupted
    When tenant "alpha" submits the same client_token again
    Then the answer is 201 with a new step, attempt 1, retry_of the interrupted step
    And the run lists both attempts in submission order
    When the retry runs to its end and the run is replayed with the same token
    Then the replayed step serves the retry's frames, byte for byte

  @NERVE-4008 @NERVE-4051
  Scenario: Another tenant's checkpoint and fact lists answer exactly like unknown runs
    When tenant "alpha" runs 2 steps to their end in a run and closes it "completed"
    Then tenant "beta" listing alpha's run's checkpoints and facts gets the same 404 NOT_FOUND as for an unknown run
