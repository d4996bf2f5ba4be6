@STREAM-2005 @STREAM-2002
Feature: Interrupted engine streams and cancellation end steps with typed errors

  Scenario: An engine stream that ends without a finish_reason is INTERRUPTED
    Given a mock engine that stops after 5 tokens without finishing
    When I run an llm_call to completion on it
    Then the stream ends with error INTERRUPTED after 5 token frames
    And the step status is interrupted

  Scenario: Cancelling a running step ends its stream with CANCELLED and no token after it
    Given a slow mock engine at 200 tokens per second
    When I start an llm_call and cancel it after 5 token frames
    Then the stream ends with error CANCELLED
    And no token frame follows the cancel
    And cancelling again changes nothing
