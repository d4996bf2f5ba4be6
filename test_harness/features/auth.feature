@NERVE-4050 @NERVE-4051
Feature: Bearer tokens, tenants and safe binding

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"

  Scenario Outline: Requests without a valid bearer token are 401
    When I call GET /v1/pools with <auth>
    Then the answer is 401 with code UNAUTHORIZED
    And the answer asks for a Bearer token

    Examples:
      | auth                       |
      | no Authorization header    |
      | the token "tok-wrong"      |
      | a Basic credential         |

  Scenario: Health and readiness need no token
    Then GET /health and GET /ready answer 200 without a token

  Scenario: One tenant can never see or touch another tenant's objects
    Given tenant "alpha" has a flow, a run and a finished step
    Then tenant "beta" gets 404 NOT_FOUND for each of them, by id, by hash, stream and cancel
    And tenant "beta" cannot start a replay of alpha's run
    And tenant "beta" posting the same flow content gets its own new flow
    And tenant "alpha" still reads all of them

  Scenario: Listening on a non-loopback address without tokens is refused
    When I start orchestratord serve --host 0.0.0.0 with no tokens configured
    Then it exits with an error naming auth_tokens before listening
