@NERVE-4001 @NERVE-4000
Feature: Flows are content-addressed
  A Flow's id and hash derive from the canonical JSON of its ast_ir, tools and config.

  Scenario: The same flow posted twice with reordered keys is one flow
    Given a flow body {"ast_ir": {"b": [1, 2], "a": {"y": 1, "x": 2}}, "tools": [], "config": {"k": 1}}
    When I post it
    And I post the body {"config": {"k": 1}, "tools": [], "ast_ir": {"a": {"x": 2, "y": 1}, "b": [1, 2]}}
    Then the first answer is 201 and the second is 200
    And both answers carry the same flow_id and hash

  Scenario Outline: A change to ast_ir, tools or config makes a new flow
    Given a flow body {"ast_ir": {"a": 1}, "tools": [], "config": {"k": 1}}
    When I post it
    And I post the body <changed>
    Then the two answers carry different flow_ids and hashes

    Examples:
      | changed |
      | {"ast_ir": {"a": 2}, "tools": [], "config": {"k": 1}} |
      | {"ast_ir": {"a": 1}, "tools": [{"name": "wc", "parameters": {"type": "object"}}], "config": {"k": 1}} |
      | {"ast_ir": {"a": 1}, "tools": [], "config": {"k": 2}} |

  Scenario: Labels are metadata and do not change the identity
    Given a flow body {"ast_ir": {"a": 1}, "labels": {"team": "x"}}
    When I post it
    And I post the body {"ast_ir": {"a": 1}, "labels": {"team": "y"}}
    Then both answers carry the same flow_id and hash

  Scenario: A flow can be read by id and by hash
    Given a flow body {"ast_ir": {"steps": ["a"]}}
    When I post it
    Then GET /v1/flows/{flow_id} and GET /v1/flows:by-hash/{hash} return it
