@OAI-6000
Feature: The OpenAI-compatible facade: an SDK agent records, replays and strict-replays

  Background:
    Given a record run on the mock engine, used through the official openai SDK

  @OAI-6001 @OAI-6004
  Scenario: An SDK chat call is one llm_call Step of the Run
    When the agent asks "What is the weather in Paris?"
    Then the answer names its Step, an llm_call of the Run with client_token occurrence 0
    And asking the same again is occurrence 1 of the same call

  @OAI-6003
  Scenario: Tools come back as tool_calls
    When the agent asks "What is the weather in Paris?" with the get_weather tool required
    Then the answer is tool_calls of get_weather with finish_reason tool_calls

  @OAI-6004 @OAI-6007
  Scenario: A replay serves the recording with no engine request, a strict_replay proves it
    Given the agent asked "What is the weather in Paris?" and "And in Rome?"
    When the agent runs again against a replay run of it
    Then it gets the recorded answers, byte for byte, with 0 engine requests
    When the agent runs again against a strict_replay run of it
    Then it gets the recorded answers, byte for byte, with 2 engine requests

  @OAI-6004
  Scenario: A changed prompt in replay names the nearest call and the field
    Given the agent asked "What is the weather in Paris?" and "And in Rome?"
    When the agent asks "And in Oslo?" as its second question in a replay run
    Then the SDK raises ConflictError naming messages[3].content

  @OAI-6002 @OAI-6005
  Scenario: A parameter the engine cannot honour is refused by name
    When the agent asks with n 2
    Then the SDK raises BadRequestError with param n and code INVALID_PARAMS
    And the engine received 0 requests

  @OAI-6005 @OAI-6006
  Scenario: Hostile input is a typed 400 in OpenAI's shape, and native routes keep theirs
    When a body nested 500 levels deep is posted to the facade
    Then the answer is 400 with an OpenAI error body of param body
    When the same body is posted to the native step route
    Then the answer is 400 with the flat error envelope
