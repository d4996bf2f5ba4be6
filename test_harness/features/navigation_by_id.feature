@NERVE-4074 @NERVE-4075
Feature: Checkpoints and Facts by id, and a Flow's Facts a page at a time
  A client reads back one Checkpoint or one Fact by its identifier, and another tenant's
  identifier answers exactly like an unknown one; it pages through a Flow's Facts with a
  limit and an after cursor, following Link rel="next" headers.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"
    And tenant "alpha" has a run with a fact and a checkpoint

  @NERVE-4074
  Scenario: A checkpoint and a fact are read back by id as their run's lists show them
    When tenant "alpha" gets the checkpoint and the fact by id
    Then both answer 200 with the same objects as the run's checkpoint and fact lists

  @NERVE-4074 @NERVE-4051
  Scenario Outline: Another tenant's id answers exactly like an unknown one
    When tenant "beta" gets the <kind> of alpha by id and an unknown <kind> id
    Then both answer 404 NOT_FOUND naming the id in data.<field>, alike but for the id

    Examples:
      | kind       | field         |
      | checkpoint | checkpoint_id |
      | fact       | fact_id       |

  @NERVE-4075
  Scenario: A flow's facts page across its runs in append order, each exactly once
    When tenant "alpha" appends 5 facts alternating between two runs of one flow
    And tenant "alpha" follows the flow's facts with limit 2 through its Link headers
    Then the pages hold 2, 2 and 2 facts, the run's first fact and the 5 new ones in append order
    And the last page has no Link header

  @NERVE-4075
  Scenario: The type filter is kept across the flow's fact pages
    When tenant "alpha" appends 5 facts alternating between two runs of one flow
    And tenant "alpha" follows the flow's facts of type "odd" with limit 1 through its Link headers
    Then the facts listed are the new facts 1 and 3, one a page

  @NERVE-4075 @NERVE-4051
  Scenario Outline: A bad flow fact page request is refused, naming the parameter
    When tenant "<tenant>" lists alpha's flow facts with "<query>"
    Then the answer is <status> <code> with data.field "<field>"

    Examples:
      | tenant | query                         | status | code           | field |
      | alpha  | limit=0                       | 400    | INVALID_PARAMS | limit |
      | alpha  | limit=10001                   | 400    | INVALID_PARAMS | limit |
      | alpha  | after=fct_000000000000000000000000 | 400 | INVALID_PARAMS | after |
      | beta   | limit=2                       | 404    | NOT_FOUND      | none  |
