@STREAM-2006 @STREAM-2001 @NERVE-4021
Feature: A token frame is one engine token, with its id and exact bytes
  The mock engine splits accented and Japanese words inside a character, as a real
  tokenizer does, so the byte path is exercised without an engine.

  Background:
    Given a record run on a mock engine that splits characters over tokens

  Scenario: A character split over two tokens is shown by the token that completes it
    When I run an llm_call of 15 tokens to completion
    Then some token frame ends inside a character and the next one completes it
    And the concatenated token bytes decode to the step's output text
    And no token text holds U+FFFD
    And tokens_out equals the number of token frames

  Scenario: strict_replay of split characters matches byte for byte
    When I run an llm_call of 15 tokens to completion
    And I strict-replay that step
    Then the replayed token frames equal the recorded ones byte for byte

  Scenario: A stop string ends the step and is never shown, but its tokens count
    When I run an llm_call of 15 tokens to completion
    And I run it again with its fifth word as a stop string
    Then the step ends with finish_reason stop
    And the output is the text before that word
    And tokens_out counts the withheld stop token beyond the token frames
