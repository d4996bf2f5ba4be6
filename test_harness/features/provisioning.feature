@PLACE-5100 @PLACE-5101 @PLACE-5104 @PLACE-5108 @PLACE-5109
Feature: Remote replicas are provisioned at run time by operators and drained

  Scenario: an operator provisions a replica that then serves a pinned step
    Given a remote pool on a fake llama-server and provisioning open to tenant ops
    When tenant ops provisions a second server with the same build into pool remote-0
    And I run an llm_call pinned to replica remote-0/r1
    Then the answer is 201 and the step ended on replica remote-0/r1

  Scenario: a tenant that is not an operator is refused
    Given a remote pool on a fake llama-server and provisioning open to tenant ops
    When tenant alice provisions a second server with the same build into pool remote-0
    Then the answer is 403 with code POLICY_DENIED naming field "authorization"

  Scenario: a server of another build is refused before it takes traffic
    Given a remote pool on a fake llama-server and provisioning open to tenant ops
    When tenant ops provisions a second server with build b2-other into pool remote-0
    Then the answer is 409 with code CONFLICT naming field "build_fingerprint"
    And pool remote-0 lists replicas {"remote-0/r0": "ready"}

  Scenario: a drained replica takes no new step and is then removed
    Given a remote pool on a fake llama-server and provisioning open to tenant ops
    When tenant ops provisions a second server with the same build into pool remote-0
    And tenant ops drains replica r1 of pool remote-0
    Then a step pinned to replica remote-0/r1 is refused with 503 POOL_UNREADY
    And pool remote-0 soon lists replicas {"remote-0/r0": "ready", "remote-0/r1": "removed"}
