@NERVE-4076
Feature: Capabilities describe everything a client can ask for
  A client discovers, from GET /v1/capabilities alone, the step types, the frame types,
  the tool executors with their argument schemas, each model's price and every limit.

  @NERVE-4076
  Scenario: The default server lists its types, built-in tools, prices and limits
    Given a mock server pricing "mock:echo-1" at 0.5 USD in and 1.5 USD out per million tokens
    When I read the capabilities
    Then the step types and frame types are every value of StepType and FrameType
    And the tool executors are json_query, sha256 and wc with their exact input schemas
    And the price of "mock:echo-1" is 0.5 in and 1.5 out in price table "test-prices-1"
    And the limits name every bound with its configured or fixed value

  @NERVE-4076
  Scenario: An operator argv executor advertises its placeholders as required scalars
    Given a mock server whose only tool executor is argv "echo" "{word}" "{count}"
    When I read the capabilities
    Then the only executor is "echo" of kind argv whose schema requires count and word as scalars
