@POLICY-3001 @NERVE-4023
Feature: fs_op runs inside the Run's sandbox through the FS broker

  Background:
    Given a record run whose sandbox allows write, read and list under "out", on a server recording values of at most 4096 bytes

  Scenario: A file written through the broker reads back, atomically
    When I run fs_op write "out/notes.txt" with "hello sandbox"
    And I run fs_op read "out/notes.txt"
    Then the read step ends with content "hello sandbox"
    And the sandbox holds exactly out/notes.txt with "hello sandbox"

  Scenario: A violation is a typed error frame and changes nothing on disk
    When I run fs_op write "../escape.txt" with "x"
    Then the step ends with error FS_POLICY_VIOLATION
    And the sandbox and its parent are unchanged

  Scenario: Repeated violations open the run's breaker
    When I run 3 fs_op writes outside the allow-list
    Then the third stream has an escalation closed to open for "fs"
    And the next fs_op is refused with 503 CIRCUIT_OPEN

  Scenario: Replays serve recorded fs results and never touch the file system
    When I run fs_op write "out/a.txt" with "recorded"
    And I run fs_op read "out/a.txt"
    And I delete the sandbox file out/a.txt behind the server's back
    And I replay the run in mode replay and in mode strict_replay
    Then every replayed step's frames equal the recording
    And out/a.txt was not written again

  Scenario: A sandbox outside the operator's allowed parents is refused at run creation
    When I create a run whose fs_policy root is "/tmp"
    Then the answer is 400 with code INVALID_PARAMS

  @POLICY-3010
  Scenario: A read whose content is over the server's bound ends with OUTPUT_TOO_LARGE
    When I run fs_op write "out/big.txt" with 5000 bytes
    And I run fs_op read "out/big.txt"
    Then the write ended with end and the read with OUTPUT_TOO_LARGE {"field": "output", "reason": "size", "limit_bytes": 4096}
    And no stored frame of the read is larger than 1024 bytes
