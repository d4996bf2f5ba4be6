@POLICY-3001 @NERVE-4023
Feature: fs_op runs inside the Run's sandbox through the FS broker

  Rule: One Run's sandbox

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

    @POLICY-3010
    Scenario: A sandbox outside the operator's allowed parents is refused at run creation
      When I create a run whose fs_policy root is "/tmp"
      Then the answer is 403 with code FS_POLICY_VIOLATION

    @POLICY-3030
    Scenario: A read whose content is over the server's bound ends with OUTPUT_TOO_LARGE
      When I run fs_op write "out/big.txt" with 5000 bytes
      And I run fs_op read "out/big.txt"
      Then the write ended with end and the read with OUTPUT_TOO_LARGE {"field": "output", "reason": "size", "limit_bytes": 4096}
      And no stored frame of the read is larger than 1024 bytes

  Rule: Sandboxes belong to a tenant

    Background:
      Given tenants "alpha" and "beta" with bearer tokens

    @POLICY-3010
    Scenario: Another tenant's root is refused exactly like a root that does not exist
      Given tenant "alpha" has a record run with its own absolute root "work" holding "report.txt"
      When tenant "beta" names alpha's root "later" before alpha creates it
      And tenant "alpha" creates a record run with its own absolute root "later"
      And tenant "beta" names alpha's roots "later", "work" and "never"
      And tenant "beta" names alpha's directory, the sandbox parent and "../alpha/work"
      Then every answer to beta is 403 FS_POLICY_VIOLATION with one identical body
      And alpha's root "work" still holds only "report.txt" and beta has no directory

    @POLICY-3010
    Scenario: A relative root lies in the caller's own directory
      When tenant "beta" creates a record run with the relative root "work" and writes "b.txt"
      Then the file is at "beta/work/b.txt" under the sandbox parent and alpha has no directory

    @POLICY-3010
    Scenario: Capabilities show each tenant only its own sandbox directory
      Then GET /v1/capabilities lists for each tenant only its own directory of the parent

    @POLICY-3011
    Scenario Outline: A refused Run creation leaves no directory behind
      When tenant "alpha" creates a record run with its own absolute root "early" and <flaw>
      Then the answer is <status> with code <code>
      And the sandbox parent holds no directory

      Examples:
        | flaw                                 | status | code                |
        | replay_of set on a record run        | 400    | INVALID_PARAMS      |
        | from_checkpoint naming no checkpoint | 404    | NOT_FOUND           |
        | a second root in beta's directory    | 403    | FS_POLICY_VIOLATION |

    @POLICY-3011
    Scenario: Too many sandbox roots are a typed 400 naming fs_policy.roots
      When tenant "alpha" creates a record run with 17 absolute roots of its own
      Then the answer is 400 with code INVALID_PARAMS
      And the error names the field "fs_policy.roots"
      And the sandbox parent holds no directory
