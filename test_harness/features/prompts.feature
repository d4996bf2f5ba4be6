@NERVE-4090 @NERVE-4091 @NERVE-4092
Feature: No hidden prompts
  A prompt reaches the engine byte for byte. The text a chat template makes of messages,
  with any system turn of its own, is kept, hashed in the terminal frame's provenance and
  read back with GET /v1/steps/{id}/prompt. A plan never falls back to a looser
  constraint unless its caller allows it.

  Background:
    Given a server whose model's chat template adds its own system turn

  @NERVE-4090
  Scenario: A prompt reaches the engine byte for byte, with no template
    When I run an llm_call with a raw prompt holding chat markup, CR LF and non-ASCII text
    Then the engine received exactly the prompt's bytes
    And the end frame's provenance has no rendered_hash
    And GET prompt answers the prompt with its b3 hash and no template

  @NERVE-4091 @NERVE-4092
  Scenario: The rendered chat text of a messages step is retrievable and hashed
    When I run an llm_call with one user message and no system message
    Then the engine received the template's text with its own system turn
    And the end frame's provenance rendered_hash is the b3 hash of that text
    And GET prompt answers that text, that hash and template "mock"

  @NERVE-4092 @NERVE-4051
  Scenario: Another tenant's step prompt answers like an unknown step
    When I run an llm_call with one user message and no system message
    And another tenant asks for that step's prompt and for an unknown step's
    Then both answer 404 NOT_FOUND naming the step id, alike but for the id

  @NERVE-4094
  Scenario: A plan the engine cannot constrain is refused unless the caller allows it
    Given a flow declaring a tool whose schema the grammar cannot express
    When I plan over that tool without a fallback
    Then the answer is 400 with code INVALID_PARAMS naming field "input.tools" and fallback "envelope"
    When I plan over that tool with fallback "allow"
    Then the end frame's provenance says fallback "envelope"
