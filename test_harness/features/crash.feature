@NERVE-4040 @STREAM-2000 @PLACE-5002
Feature: A crash leaves the store consistent and nothing accepted is lost

  @NERVE-4042 @NERVE-4105
  Scenario: kill -9 during a streaming step, then restart
    Given a server on a slow mock engine with a step streaming
    When the server is killed with SIGKILL after 20 token frames were read
    And the server restarts on the same data directory
    Then the step is interrupted and its stream ends with an INTERRUPTED error frame
    And the step's log has no gaps and still holds every token frame that was read
    And the step and its INTERRUPTED frame record the tokens it consumed, their cost and its wall time
    And the run's usage is its one interrupted step's usage
    And re-submitting the same client_token retries the interrupted step as attempt 1, answered as itself from then on
    And the store's integrity check finds no gap, stale cursor, second terminal frame or usage counter off its recount
