@NERVE-4080 @NERVE-4081 @NERVE-4085 @NERVE-4089
Feature: LLM job lifecycle (the client contract: capabilities, enqueue, stream, cancel)
  A thin client discovers the models, enqueues a job with a user-authored prompt and an
  optional response contract, streams its events until "done" (or an explicit "error"),
  and may cancel it. A job is an llm_call Step; its attachments are stored by sha256 and
  its metadata is returned, outside the prompt hash.

  Background:
    Given a server with tokens "tok-a" for tenant "alpha" and "tok-b" for tenant "beta"

  @NERVE-4080 @NERVE-4081 @NERVE-4085 @NERVE-4089
  Scenario: Discover -> Enqueue -> Stream to completion
    Given the orchestrator advertises a model "mock:*"
    When I enqueue a job with that model and a JSON schema contract
    Then I should receive a stream of token events and a final "done"
    And no "error" events MUST occur
    And the tokens concatenate to a document the contract accepts

  @NERVE-4088 @NERVE-4085 @NERVE-4089
  Scenario: A job cancelled mid-stream ends with a CANCELLED error event
    Given the engine streams 50 tokens a second
    When I enqueue a long job and cancel it once it has streamed 2 tokens
    Then the cancel answers 202 with status "cancelling"
    And the stream holds token events, then one "error" event with code "CANCELLED", and no "done"
    And cancelling it again answers 200 with the job, status "cancelled"

  @NERVE-4089 @NERVE-4072 @NERVE-4085
  Scenario: A dropped connection raises ERR_STREAM_DISCONNECTED, and the stream resumes after it
    When I enqueue a job and read its stream through a connection that drops after 3 events
    Then the client raises ERR_STREAM_DISCONNECTED naming the job and event id 2
    And reading again from event id 2 gives the rest, ending with "done", with nothing repeated or missed

  @NERVE-4085 @NERVE-4054
  Scenario: A finished job's stream re-read from its last event answers 204, and a ticket opens it
    When I enqueue a job and read its stream to the end
    Then a re-read with Last-Event-ID at the "done" event answers 204
    And a stream ticket of the job's step opens its events without a bearer token

  @NERVE-4083 @NERVE-4084
  Scenario: Attachments are stored by sha256 and listed with the metadata
    When I enqueue a job with attachments "adr-013.md" = "# ADR 13" and "b.bin" = "hello" and metadata {"request_id": "req-42", "repo": "nerve"}
    Then getting the job lists the attachments by name with their sha256 and size
    And the job's metadata is {"request_id": "req-42", "repo": "nerve"}
    And the store holds each attachment's bytes once under the tenant and its sha256

  @NERVE-4083 @NERVE-4082
  Scenario: Metadata is not part of the prompt hash, and the derived client_token covers the body
    When I enqueue the prompt "same words" twice, with metadata {"n": 1} and with metadata {"n": 2}
    Then the two jobs are two steps with the derived client_tokens of their bodies, occurrence 0
    And both steps' provenance carry the same prompt_hash, the hash of the prompt alone

  @NERVE-4082
  Scenario: A job's client_token is its idempotency key
    When I enqueue the same body twice without a client_token, then twice with client_token "k-1"
    Then the first two are occurrences 0 and 1 of one derived key, both answered 201
    And the two with "k-1" answer 201 then 200 with the same job
    And "k-1" with other metadata answers 409 CONFLICT naming field "metadata"

  @NERVE-4082
  Scenario: Replaying interpreter code that passed no client_token matches its recording
    Given a record run of tenant "alpha" holding two jobs enqueued without client_token
    When the same two jobs are enqueued into a replay run of it
    Then each replayed job is served from the recorded step with the recorded tokens

  @NERVE-4086 @NERVE-4051
  Scenario: Another tenant's job answers exactly like an unknown id
    When tenant "alpha" enqueues a job
    Then tenant "beta" reading, streaming and cancelling it gets the answers of an unknown job id
    And tenant "beta" enqueueing into alpha's run gets the answer of an unknown run id

  @NERVE-4087
  Scenario Outline: Hostile input is refused with a typed 400 naming the field
    When I enqueue a hostile job with <input>
    Then the answer is 400 INVALID_PARAMS naming field "<field>" for reason "<reason>"
    And nothing was stored for it

    Examples:
      | input                                   | field                 | reason     |
      | an attachment of 300 KiB "big.bin"      | attachments.big.bin   | size       |
      | an attachment "x.txt" of bad base64     | attachments.x.txt     | base64     |
      | three attachments of 200 KiB            | attachments           | total_size |
      | metadata nested 12 deep                 | metadata              | depth      |
      | metadata of 20 KiB                      | metadata              | size       |

  @NERVE-4081
  Scenario: An unknown model is ERR_INVALID_MODEL and a prompt too big for the context is ERR_CONTEXT_BUDGET
    When I enqueue through the Python client a job for model "mock:nope" and a job whose prompt does not fit the context
    Then the client raises ERR_INVALID_MODEL then ERR_CONTEXT_BUDGET
