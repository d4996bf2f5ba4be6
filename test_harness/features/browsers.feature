@STREAM-2012 @NERVE-4053 @NERVE-4054
Feature: Browsers read Step streams with EventSource

  Background:
    Given a record run on the mock engine

  Scenario: A reconnect after the terminal frame answers 204 so EventSource stops
    When a browser reads a Step's stream to its end frame
    Then reconnecting with Last-Event-ID at the end frame answers 204 with no body
    And reconnecting with Last-Event-ID before the end frame streams the end frame again

  Scenario: A page on an allowed origin may read the answers, another origin may not
    Given the server allows the origin "http://app.example:5173"
    When a page on "http://app.example:5173" reads a Step's stream
    Then the answer carries Access-Control-Allow-Origin "http://app.example:5173"
    When a page on "http://evil.example" reads a Step's stream
    Then the answer carries no CORS header

  Scenario: A stream ticket opens one Step's stream without the bearer token
    Given a server with the token "tok-a" and a finished Step of its tenant
    When the client asks a stream ticket for that Step
    Then the Step's stream opens with the ticket and no Authorization header
    And the ticket answers 401 once the server's clock is 60 s later
