@NERVE-4071
Feature: Checkpoints and Facts by id
  A client reads back one Checkpoint or one Fact by its identifier, and another tenant's
  identifier answers exactly like an unknown one.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"
    And tenant "alpha" has a run with a fact and a checkpoint

  @NERVE-4071
  Scenario: A checkpoint and a fact are read back by id as their run's lists show them
    When tenant "alpha" gets the checkpoint and the fact by id
    Then both answer 200 with the same objects as the run's checkpoint and fact lists

  @NERVE-4071 @NERVE-4051
  Scenario Outline: Another tenant's id answers exactly like an unknown one
    When tenant "beta" gets the <kind> of alpha by id and an unknown <kind> id
    Then both answer 404 NOT_FOUND naming the id in data.<field>, alike but for the id

    Examples:
      | kind       | field         |
      | checkpoint | checkpoint_id |
      | fact       | fact_id       |
