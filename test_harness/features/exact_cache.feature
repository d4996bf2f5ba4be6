@REC-7100 @REC-7101 @REC-7102 @REC-7103 @REC-7104 @REC-7105 @REC-7106 @REC-7107
Feature: The exact-match cache
  A record Run created with the cache on serves an LLM step from an earlier succeeded
  step of the same tenant whose input and determinism inputs are the same: by reference
  to its frames, with no engine request, its provenance naming the source step.

  Background:
    Given a mock-engine server with tenants "acme" and "globex"

  @REC-7101 @REC-7103
  Scenario: The same step in two runs of one seed makes one engine request
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7 and the cache on
    Then the engines received 1 completion request and 1 prompt count in all
    And the second step's stream equals the first step's stream byte for byte
    And the second step is succeeded with the first step's usage and seed
    And the second step's provenance names the first step in cached_from
    And the second step added no row to the event log
    And /metrics counts 1 llm_call step served from "cached"

  @REC-7101
  Scenario: Two steps of one run with their own client tokens hit when the input fixes the seed
    When tenant "acme" runs steps "a" and "b" with prompt "hello" and params seed 42 in one run with the cache on
    Then the engines received 1 completion request and 1 prompt count in all
    And the second step's provenance names the first step in cached_from

  @REC-7101
  Scenario: Two steps of one run with their own client tokens and derived seeds both run
    When tenant "acme" runs steps "a" and "b" with prompt "hello" in one run with the cache on
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step's provenance has no cached_from

  @REC-7101
  Scenario: A changed sampling parameter is another key
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" runs step "s-1" with prompt "tell me a story" at temperature 0.5 in a run with seed 7 and the cache on
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step's provenance has no cached_from

  @REC-7104
  Scenario: Another tenant's identical step makes its own request
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "globex" runs step "s-1" with prompt "tell me a story" in a run with seed 7 and the cache on
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step's provenance has no cached_from

  @REC-7100
  Scenario: The cache is off by default
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step's provenance has no cached_from
    And the second run shows cache "off"

  @REC-7102
  Scenario: A failed step is never served
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7 that failed on its output budget
    When tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7 and the cache on
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step's provenance has no cached_from

  @REC-7105
  Scenario: A served step counts against the run's budgets as if it had run
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7 and the cache on
    Then the second run's usage equals the first run's usage

  @REC-7105
  Scenario: A step the run's budget would cut is not served
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7, the cache on and max_tokens_out 2
    Then the engines received 2 completion requests and 2 prompt counts in all
    And the second step is failed with BUDGET_EXCEEDED

  @REC-7106
  Scenario: A tool call is never served from the cache
    When tenant "acme" runs the tool call "count" twice with the same arguments in one run with the cache on
    Then the tool executor "wc" ran 2 times

  @REC-7107
  Scenario: replay and strict_replay of a run that used the cache reproduce what it served
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    And tenant "acme" runs step "s-1" with prompt "tell me a story" in a run with seed 7 and the cache on
    When tenant "acme" replays the second run in mode replay
    And tenant "acme" replays the second run in mode strict_replay
    Then both replays' streams equal the first step's stream byte for byte
    And the engines received 2 completion requests and 2 prompt counts in all
    And /metrics counts 1 llm_call step served from "recorded"

  @REC-7100
  Scenario: The cache is refused on a replay run
    Given tenant "acme" recorded step "s-1" with prompt "tell me a story" in a run with seed 7
    When tenant "acme" creates a replay run of it with the cache on
    Then the answer is 400 INVALID_PARAMS naming field "cache"
