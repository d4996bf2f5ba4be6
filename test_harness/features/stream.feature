@STREAM-2001 @STREAM-2004 @NERVE-4020 @STREAM-2000
Feature: Step streams are ordered SSE cursors over the durable log

  Background:
    Given a record run on the mock engine

  Scenario: Frames arrive as started, tokens, end with consecutive indices
    When I run an llm_call to completion
    Then the events are started, then only token frames, then end
    And every durable frame has an id equal to its position
    And the token indices are consecutive from 0
    And tokens_out in the end frame equals the number of token frames
    And the end frame carries every provenance field

  Scenario: Reading a finished step's stream again gives the same bytes
    When I run an llm_call to completion
    Then reading the stream again returns identical bytes

  Scenario: Last-Event-ID resumes exactly after the given frame
    When I run an llm_call to completion
    Then reading with Last-Event-ID 3 returns exactly the frames after id 3

  Scenario: A stream response carries SSE headers and a correlation id
    When I run an llm_call to completion
    Then the stream response is text/event-stream with an X-Correlation-Id
