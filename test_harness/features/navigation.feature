@NERVE-4061
Feature: Navigation lists of Flows, Runs and Steps
  A client pages through its tenant's Flows, a Flow's Runs and a Run's Steps with a
  limit and an after cursor, following Link rel="next" headers, and never sees another
  tenant's objects.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"

  @NERVE-4061
  Scenario: Listing flows pages through the tenant's own flows, each exactly once
    When tenant "alpha" creates 5 flows and tenant "beta" creates 2 flows
    And tenant "alpha" follows GET /v1/flows with limit 2 through its Link headers
    Then the pages hold 2, 2 and 1 items, all of alpha's 5 flows in creation order
    And the last page has no Link header
    And tenant "beta" lists exactly its 2 flows

  @NERVE-4061
  Scenario Outline: Listing a flow's runs filters by mode, status and label across pages
    When tenant "alpha" starts 5 runs of a flow, labelled team a, b, a, b, a, and cancels runs 2 and 3
    And tenant "alpha" follows the flow's runs with "<query>" and limit 1 through its Link headers
    Then the runs listed are <runs>

    Examples:
      | query                               | runs            |
      | (none)                              | [0, 1, 2, 3, 4] |
      | mode=record                         | [0, 1, 2, 3, 4] |
      | mode=replay                         | []              |
      | status=cancelled                    | [2, 3]          |
      | status=active&mode=record           | [0, 1, 4]       |
      | label=team:a                        | [0, 2, 4]       |
      | label=team:a&status=active          | [0, 4]          |
      | label=team:b&status=cancelled       | [3]             |
      | label=team:c                        | []              |

  @NERVE-4061
  Scenario: Listing a run's steps pages in submission order
    When tenant "alpha" submits 5 steps to a run
    And tenant "alpha" follows the run's steps with limit 2 through its Link headers
    Then the pages hold 2, 2 and 1 items, the 5 steps in submission order with ordinals 0 to 4
    And the last page has no Link header

  @NERVE-4061 @NERVE-4051
  Scenario: Another tenant's flow and run answer exactly like unknown ones
    When tenant "alpha" submits 5 steps to a run
    Then tenant "beta" listing alpha's flow's runs and run's steps gets the same 404 NOT_FOUND as for unknown ids
    And tenant "beta" paging its flows after alpha's flow is refused with 400 INVALID_PARAMS naming field "after"

  @NERVE-4061
  Scenario Outline: A bad list request is refused naming the parameter
    When tenant "alpha" submits 5 steps to a run
    And tenant "alpha" GETs the <list> list with "<query>"
    Then the list request is refused with 400 INVALID_PARAMS naming field "<field>"

    Examples:
      | list  | query                  | field  |
      | flows | limit=0                | limit  |
      | flows | limit=1001             | limit  |
      | flows | after=flw_doesnotexist | after  |
      | runs  | limit=0                | limit  |
      | runs  | after=run_doesnotexist | after  |
      | runs  | mode=bogus             | mode   |
      | runs  | status=done            | status |
      | runs  | label=nocolon          | label  |
      | runs  | label=:empty-key       | label  |
      | steps | limit=1001             | limit  |
      | steps | after=stp_doesnotexist | after  |
