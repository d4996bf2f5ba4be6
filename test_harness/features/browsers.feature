@STREAM-2012
Feature: Browsers read Step streams with EventSource

  Background:
    Given a record run on the mock engine

  Scenario: A reconnect after the terminal frame answers 204 so EventSource stops
    When a browser reads a Step's stream to its end frame
    Then reconnecting with Last-Event-ID at the end frame answers 204 with no body
    And reconnecting with Last-Event-ID before the end frame streams the end frame again
