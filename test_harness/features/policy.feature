@POLICY-3003 @POLICY-3000 @NERVE-4002
Feature: Policy is evaluated before execution and budgets are hard caps

  Scenario: A run records its mode, seed, budgets and policies
    Given a flow on the mock engine
    When I create a record run with seed 42, a step budget and a policy
    Then the run shows mode record, seed 42, its budgets, policy, pool_policy and fs_policy
    And its policy_hash is the content hash of the policy

  Scenario: A denied model is refused before any compute and nothing is stored
    Given a flow on the mock engine
    When I create a record run whose policy denies model "mock:echo-1"
    And I submit an llm_call on model "mock:echo-1"
    Then the answer is 403 with code POLICY_DENIED
    And the engines received no request and the run has no step

  Scenario: A denied step type is refused before any compute
    Given a flow on the mock engine
    When I create a record run whose policy allows only step type "tool_call"
    And I submit an llm_call on model "mock:echo-1"
    Then the answer is 403 with code POLICY_DENIED

  Scenario: An output budget ends the step with BUDGET_EXCEEDED, never a silent truncation
    Given a flow on the mock engine
    When I create a record run with a run budget of 5 output tokens
    And I run an llm_call that would produce 40 tokens
    Then the stream ends with error BUDGET_EXCEEDED on max_tokens_out after 5 token frames

  Scenario: A wall-clock budget ends the step with DEADLINE_EXCEEDED
    Given a flow on a mock engine at 100 tokens per second
    When I create a record run
    And I run an llm_call with a step max_wall_ms of 100
    Then the stream ends with error DEADLINE_EXCEEDED

  Scenario: Concurrent steps never overshoot the run's output budget together
    Given a flow on the mock engine
    When I create a record run with a run budget of 100 output tokens
    And I submit 8 llm_calls of 40 tokens each at once
    Then 3 steps are admitted and 5 are refused with 402 BUDGET_EXCEEDED
    And the run produced at most 100 output tokens in total

  Scenario: An input budget is checked with the model's tokenizer before dispatch
    Given a flow on the mock engine
    When I create a record run with a run budget of 3 input tokens
    And I submit an llm_call with a 10-word prompt
    Then the answer is 402 with code BUDGET_EXCEEDED naming max_tokens_in
    And the engines received no request and the run has no step

  Scenario: A cost budget caps the output at what the price table allows
    Given a flow on the mock engine priced at 0.001 USD per input and 0.002 USD per output token
    When I create a record run with a cost budget of 0.05 USD
    And I run an llm_call that would produce 40 tokens
    Then the stream ends with error BUDGET_EXCEEDED on max_cost_usd after 23 token frames
    And the end of the run shows a cost of at most 0.05 USD

  Scenario: Run responses say how much budget is left
    Given a flow on the mock engine
    When I create a record run with a run budget of 100 output tokens
    And I run an llm_call that would produce 40 tokens
    Then GET /v1/runs/{id} carries X-Budget-Tokens-Out-Remaining 60

  Scenario: Redaction is applied before the engine sees the prompt, and recorded
    Given a flow on the mock engine
    When I create a record run whose policy redacts "sk-[A-Za-z0-9]+"
    And I run an llm_call with the prompt "my key is sk-ABC123 and sk-XYZ"
    Then the engine saw the prompt "my key is [REDACTED] and [REDACTED]"
    And the started frame records 2 redactions
    And the stored step input holds the redacted prompt, not the secrets

  Scenario: An invalid redaction pattern is refused when the run is created
    Given a flow on the mock engine
    When I try to create a run whose policy redacts "sk-[unclosed"
    Then the answer is 400 with code INVALID_PARAMS

  @POLICY-3021
  Scenario: A redaction pattern with a lookahead is refused naming policy.redact
    Given a flow on the mock engine
    When I try to create a run whose policy redacts "sk-(?=[0-9])"
    Then the answer is 400 with code INVALID_PARAMS
    And the refusal names field "policy.redact"

  @POLICY-3021
  Scenario: A catastrophic redaction pattern meets a hostile prompt without stalling
    Given a flow on the mock engine
    When I create a record run whose policy redacts "^(a+)+$"
    And I run an llm_call whose prompt is 50000 "a" followed by "!"
    Then the started frame records 0 redactions
