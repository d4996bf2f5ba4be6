@STREAM-2005 @STREAM-2002 @POLICY-3002
Feature: Interrupted engine streams and cancellation end steps with typed errors

  Scenario: An engine stream that ends without a finish_reason is INTERRUPTED
    Given a mock engine that stops after 5 tokens without finishing
    When I run an llm_call to completion on it
    Then the stream ends with error INTERRUPTED after 5 token frames
    And the step status is interrupted

  @NERVE-4070
  Scenario: Cancelling a running step ends its stream with CANCELLED and no token after it
    Given a slow mock engine at 200 tokens per second
    When I start an llm_call and cancel it after 5 token frames
    Then the cancel of the live step answered 202 {"status": "cancelling"}
    And the stream ends with error CANCELLED
    And no token frame follows the cancel
    And cancelling again changes nothing

  Scenario: A client disconnect cancels the step within a bounded window
    Given a Granian server with 200 ms heartbeats and a 200 ms reconnect grace
    When a reader disconnects after 5 token frames of a long step
    Then the step is cancelled within 3 seconds with reason "every reader disconnected"

  Scenario: A run can keep its steps running when readers disconnect
    Given a Granian server with 200 ms heartbeats and a 200 ms reconnect grace
    When a reader of a run with cancel_on_disconnect false disconnects after 5 token frames
    Then the step is still running 1.5 seconds later

  Scenario: A reader that reconnects within the grace resumes with Last-Event-ID
    Given a Granian server with 200 ms heartbeats and a 2000 ms reconnect grace
    When a reader disconnects after 5 token frames and resumes at once with Last-Event-ID
    Then the resumed stream continues right after the last frame read until our own cancel

  @NERVE-4060
  Scenario: A replica's circuit breaker opens, refuses, probes and closes
    Given one mock replica that fails every request, with a breaker of 3 failures and 300 ms
    When I run 3 llm_calls
    Then each ends with error ENGINE_ERROR and the third stream has an escalation closed to open
    And GET /v1/pools shows the replica's breaker open
    And a fourth llm_call is refused with 503 CIRCUIT_OPEN and a Retry-After
    When the engine recovers and 299 ms pass on the server's clock
    Then a fourth llm_call is refused with 503 CIRCUIT_OPEN and a Retry-After
    And GET /v1/pools shows the replica's breaker open
    When 1 more ms pass on the server's clock
    And I run 1 llm_calls
    Then its stream has escalations open to half_open and half_open to closed, then end
    And GET /v1/pools shows the replica's breaker closed
