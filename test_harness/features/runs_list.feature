@REC-7051
Feature: The tenant-wide list of Runs
  A person (or the inspector page) pages through every Run of the tenant, of every Flow,
  with the cursor and filters of the per-Flow list, and never sees another tenant's Run.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"
    And tenant "alpha" starts runs 0 to 4 alternating between two flows, labelled team a, b, a, b, a, cancelling runs 2 and 3
    And tenant "beta" starts 2 runs of its own flow, labelled team a

  @REC-7051
  Scenario Outline: GET /v1/runs lists the tenant's runs of every flow, filtered, across pages
    When tenant "alpha" follows GET /v1/runs with "<query>" and limit 2 through its Link headers
    Then the runs listed are <runs>, each exactly once

    Examples:
      | query                      | runs            |
      | (none)                     | [0, 1, 2, 3, 4] |
      | mode=replay                | []              |
      | status=cancelled           | [2, 3]          |
      | label=team:a               | [0, 2, 4]       |
      | label=team:a&status=active | [0, 4]          |

  @REC-7051 @NERVE-4051
  Scenario: Another tenant's runs are neither listed nor a cursor
    When tenant "beta" follows GET /v1/runs with "(none)" and limit 2 through its Link headers
    Then tenant "beta" sees only its 2 runs
    And tenant "beta" paging after alpha's run 0 gets the same 400 as after an unknown run, naming field "after"
