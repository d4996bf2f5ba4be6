@PLACE-5000 @PLACE-5001
Feature: Pools are first-class and placement is deterministic

  Scenario: GET /v1/pools describes the pool, its engine and replicas
    Given the mock pool with 2 replicas of 4 slots
    When I list the pools
    Then the pool mock-0 shows engine, version, build fingerprint, model sha256, slots and health

  Scenario: auto placement breaks ties by free slots then replica_id
    Given the mock pool with 2 replicas of 4 slots
    When I run an llm_call with auto placement
    Then it was placed on replica mock-0/r0 by strategy auto

  Scenario: pin placement honours the replica
    Given the mock pool with 2 replicas of 4 slots
    When I run an llm_call pinned to replica mock-0/r1
    Then it was placed on replica mock-0/r1 by strategy pin

  Scenario: affinity with no matching pool is a typed error, never a fallback
    Given the mock pool with 2 replicas of 4 slots
    When I submit an llm_call with affinity tags {"device": "gpu"}
    Then the answer is 503 with code POOL_UNAVAILABLE

  Scenario: capabilities advertise opaque model ids, limits and the server version
    Given the mock pool with 2 replicas of 4 slots
    When I read the capabilities
    Then they list model "mock:echo-1" with its context size, features and the server version
