@NERVE-4030 @NERVE-4031
Feature: Bad input gets a typed error and nothing partial is stored

  Background:
    Given a record run on the mock engine

  Scenario Outline: Each kind of bad input has its code and status
    When I send <request>
    Then the answer is <status> with code <code>
    And the error body has exactly code, message and retriable (plus optional data)
    And no row was added to the store

    Examples:
      | request                                   | status | code           |
      | malformed JSON to POST /v1/flows          | 400    | INVALID_PARAMS |
      | an unknown step type                      | 400    | INVALID_PARAMS |
      | an unknown model                          | 400    | INVALID_MODEL  |
      | an unknown run id                         | 404    | NOT_FOUND      |
      | an unknown step id                        | 404    | NOT_FOUND      |
      | an unknown pool id                        | 404    | NOT_FOUND      |
      | a run with an unknown mode                | 400    | INVALID_PARAMS |
      | a replay run without replay_of            | 400    | INVALID_PARAMS |
      | an llm_call with both prompt and messages | 400    | INVALID_PARAMS |
      | an llm_call with an empty messages list   | 400    | INVALID_PARAMS |
      | an llm_call with max_tokens 0             | 400    | INVALID_PARAMS |
      | a prompt larger than the context          | 400    | CONTEXT_BUDGET |
      | a step pinned to an unknown pool          | 503    | POOL_UNAVAILABLE |
      | a step in a cancelled run                 | 409    | CONFLICT       |
      | a body larger than the server's limit     | 400    | INVALID_PARAMS |
      | a client_token of 300 characters          | 400    | INVALID_PARAMS |
      | a flow with a label value of 2000 chars   | 400    | INVALID_PARAMS |
      | a run with a negative seed                | 400    | INVALID_PARAMS |
      | a flow with a tool named "rm -rf /"       | 400    | INVALID_PARAMS |

  Scenario: The correlation id is echoed, or generated when absent
    When I make a request with X-Correlation-Id "abc-123"
    Then the response carries X-Correlation-Id "abc-123"
    And a request without one gets a generated UUID

  Scenario: Router-level errors carry the envelope and a correlation id too
    When I request a path that does not exist and a route with the wrong method
    Then both answers are typed errors with an X-Correlation-Id

  Scenario: A negative Last-Event-ID is refused before the stream starts
    When I read a stream with Last-Event-ID -5
    Then the answer is 400 with code INVALID_PARAMS
