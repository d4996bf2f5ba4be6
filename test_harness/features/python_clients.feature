@NERVE-4110 @NERVE-4111 @NERVE-4112
Feature: The Python clients (Client and AsyncClient)
  An interpreter uses the blocking Client or the AsyncClient; both are thin shells over
  one sans-IO core, so the same code gets the same answers, the same typed frames and the
  same derived client_tokens from either. Nothing is retried unless the caller asks.

  @NERVE-4110 @NERVE-4111
  Scenario: The blocking and the async client answer the same interpreter code alike
    Given a server on the mock engine
    When the same interpreter code runs two equal Steps through the blocking client and through the async client
    Then both clients get the client_tokens "cli:<hash>:0" and "cli:<hash>:1"
    And both get the frames "started, token, token, token, end" decoded into their contract Structs, with the same output

  @NERVE-4112
  Scenario: A retriable refusal is raised at once unless retries are configured
    Given a server that refuses its first request with a retriable QUEUE_FULL
    When the blocking client reads the server's health with its default options
    Then it raises QUEUE_FULL after 1 request
    When a client with max_retries 2 reads the server's health
    Then it answers "ok" after 2 requests

  @NERVE-4112
  Scenario: A Run creation is never retried, even with retries configured
    Given a server that refuses its first request with a retriable QUEUE_FULL
    When a client with max_retries 2 creates a Run
    Then it raises QUEUE_FULL after 1 request
