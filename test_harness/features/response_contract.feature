@NERVE-4013
Feature: llm_call response_contract: constrained, validated, recorded output

  Background:
    Given a record run on the mock engine with a contract-aware model

  Scenario: A valid output is recorded as the parsed value
    Given the model answers {"summary": "a short text", "score": 3}
    When I call the model with the summary contract
    Then the step ends with output value {"summary": "a short text", "score": 3}
    And the engine was asked for JSON matching the summary contract

  Scenario: Output that violates the contract ends the step with a typed error
    Given the model answers {"summary": 12}
    When I call the model with the summary contract
    Then the stream ends with error CONTRACT_VIOLATION reason "schema"
    And the step's status is failed, with its tokens counted

  Scenario: Output cut off by max_tokens is a truncated contract violation
    Given the model answers {"summary": "a text much longer than the sampling limit allows"}
    When I call the model with the summary contract and max_tokens 3
    Then the stream ends with error CONTRACT_VIOLATION reason "truncated"

  Scenario: A contract that is not a JSON Schema is refused before anything runs
    When I call the model with the contract {"type": "no-such-type"}
    Then the answer is 400 with code INVALID_PARAMS
    And the engine received 0 requests

  Scenario: The contract is a determinism input of strict_replay
    Given the model answers {"summary": "a short text", "score": 3}
    When I call the model with the summary contract
    And I strict-replay it with another contract
    Then the answer is 409 with code DETERMINISM_INPUTS_DIFFER naming params_hash

  Scenario: A contract step replays byte for byte in both replay modes
    Given the model answers {"summary": "a short text", "score": 3}
    When I call the model with the summary contract
    And I replay the contract step in mode replay and in mode strict_replay
    Then both replays equal the contract recording

  @POLICY-3020
  Scenario: A contract whose pattern has a lookahead is refused naming the field
    When I call the model with the contract {"type": "object", "properties": {"s": {"type": "string", "pattern": "a(?!b)"}}}
    Then the answer is 400 with code INVALID_PARAMS
    And the refusal names field "input.response_contract" at path "/properties/s/pattern"
    And the engine received 0 requests

  @POLICY-3020
  Scenario: A catastrophic contract pattern is evaluated against a hostile answer without stalling
    Given the model answers {"s": "<200 a and !>"}
    When I call the model with the contract {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(\\w+\\s?)*$"}}}
    Then the stream ends with error CONTRACT_VIOLATION reason "schema"
