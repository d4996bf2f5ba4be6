"""Typed rows of the store: one frozen Struct per table, as every backend reads and writes
them (PLACE-5008).

Fields are in the table's column order, so a backend builds a row positionally from a
database row (``StepRow(*values)``: no dict, no validation pass). A column that a later
schema added comes after the older ones and has a default, so a store opened at an older
schema (tests simulating an older server) builds its rows from the columns it has.
JSON columns (``ast_ir``, ``body``, ``input``, ``provenance``, ...) hold JSON text, most of
it canonical; :mod:`orchestrator_core.views` decodes them into wire resources.

The event log is the hot path and stays tuples: :data:`EventRow` is appended,
:data:`EventRead` is read back. Units: tokens, USD, milliseconds.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "STEP_UPDATABLE",
    "CheckpointRow",
    "EventRead",
    "EventRow",
    "FactRow",
    "FlowRow",
    "LlmJobRow",
    "RunRow",
    "RunUsage",
    "StepRow",
    "StepUpdate",
]

EventRow = tuple[str, int, str, str, bytes]
"""``(step_id, seq, run_id, type, data_json)``: one durable frame, as appended."""

EventRead = tuple[int, str, bytes]
"""``(seq, type, data_json)``: one durable frame of a Step, as read back."""

StepUpdate = tuple[str, dict[str, Any]]
"""``(step_id, {column: value})``: a Step row change committed with the frames; the
columns are those of :data:`STEP_UPDATABLE`."""

STEP_UPDATABLE = frozenset({
    "status", "tokens_in", "tokens_out", "cost_usd", "wall_ms", "provenance", "error",
    "last_seq",
})
"""The Step columns a :data:`StepUpdate` may change; the others are written once."""


class FlowRow(msgspec.Struct, frozen=True, gc=False):
    """A stored Flow (NERVE-4001).

    Attributes:
        flow_id: ``flw_`` + 32 hex digits (derived from the hash and the tenant).
        hash: ``b3:<hex>`` content address (RFC 8785 since schema v8).
        ast_ir: the Flow's ``ast_ir``, canonical JSON text.
        tools: its tool schemas, canonical JSON text (a list).
        config: its config, canonical JSON text.
        labels: its labels, canonical JSON text, or None.
        created_at: ISO 8601 UTC.
        tenant: the owning tenant (schema v2).
    """

    flow_id: str
    hash: str
    ast_ir: str
    tools: str
    config: str
    labels: str | None
    created_at: str
    tenant: str = "default"


class RunRow(msgspec.Struct, frozen=True, gc=False):
    """A stored Run (NERVE-4002).

    Attributes:
        run_id: ``run_`` id.
        flow_id: its Flow.
        flow_hash: its Flow's hash when the Run was created.
        mode: ``record``, ``replay`` or ``strict_replay``.
        seed: the Run seed, in ``[0, 2**63)``.
        replay_of: the recorded Run a replay serves, else None.
        body: JSON text ``{budgets, policy, pool_policy, fs_policy, labels,
            cancel_on_disconnect}``.
        policy_hash: ``b3:<hex>`` of the policy.
        status: ``active`` or ``cancelled``.
        created_at: ISO 8601 UTC.
        tenant: the owning tenant (schema v2).
        parent_run_id: the Run a fork was made from (schema v4), else None.
        from_checkpoint: the checkpoint a fork was made from (schema v4), else None.
        closed_at: ISO 8601 UTC of the close (schema v13, NERVE-4103), else None.
        summary: the ``RunSummary`` of a closed Run with no live Step, JSON text
            (schema v13, NERVE-4104), else None.
    """

    run_id: str
    flow_id: str
    flow_hash: str
    mode: str
    seed: int
    replay_of: str | None
    body: str
    policy_hash: str
    status: str
    created_at: str
    tenant: str = "default"
    parent_run_id: str | None = None
    from_checkpoint: str | None = None
    closed_at: str | None = None
    summary: str | None = None


class StepRow(msgspec.Struct, frozen=True, gc=False):
    """A stored Step; ``(run_id, client_token, attempt)`` is its idempotency key
    (NERVE-4003, NERVE-4105).

    Attributes:
        step_id: ``stp_`` id.
        run_id: its Run.
        type: the step type (``llm_call``, ``tool_call``, ...).
        client_token: the client's idempotency key.
        input: the input as stored (redacted), canonical JSON text.
        input_hash: ``b3:<hex>`` of ``{type, input}`` as submitted.
        placement: the submitted placement, JSON text, or None.
        status: ``queued``, ``running`` or a terminal status.
        seed: the derived seed of an LLM Step, else None.
        created_at: ISO 8601 UTC.
        tokens_in: prompt tokens used.
        tokens_out: output tokens used.
        cost_usd: cost (USD).
        wall_ms: wall time from submission to the terminal frame (ms).
        provenance: the ``Provenance`` of a finished Step, JSON text, or None.
        error: the error envelope of a failed Step, JSON text, or None.
        last_seq: the highest committed frame seq, -1 before the first.
        replay_of_step: the recorded Step a replay serves, else None.
        ordinal: position in its Run, 0, 1, ... in creation order (schema v6); assigned
            by the store on insert, -1 on a row not yet stored.
        frames_of: the Step whose event rows are this Step's frames when it is served by
            reference (schema v10, NERVE-4025): always one with its own log; None for a
            Step with its own log.
        frames_hash: ``b3:<hex>`` of the frames' SSE bytes (schema v10): on a Step served
            by reference, of the frames it names; on a Step with its own log, set once it
            was first referenced, else None.
        attempt: 0 for the first Step of its ``client_token``, then 1, 2, ... for each
            retry of an interrupted one (schema v13, NERVE-4105).
        retry_of: the first attempt's step_id on a retry (schema v13), else None.
        cache_key: the exact-match cache key of a ``record`` LLM Step that ran on an
            engine (schema v17, REC-7102); once the Step succeeded, a later Step with
            this key may be served from it. None on every other Step.
    """

    step_id: str
    run_id: str
    type: str
    client_token: str
    input: str
    input_hash: str
    placement: str | None
    status: str
    seed: int | None
    created_at: str
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    wall_ms: int = 0
    provenance: str | None = None
    error: str | None = None
    last_seq: int = -1
    replay_of_step: str | None = None
    ordinal: int = -1
    frames_of: str | None = None
    frames_hash: str | None = None
    attempt: int = 0
    retry_of: str | None = None
    cache_key: str | None = None


class FactRow(msgspec.Struct, frozen=True, gc=False):
    """A stored Fact; ``(run_id, seq)`` is its place in the Run's order (NERVE-4004).

    Attributes:
        fact_id: ``fct_`` id.
        run_id: its Run.
        flow_id: its Run's Flow.
        seq: 0, 1, ... within the Run; assigned by the store on append.
        type: the Fact's type name.
        schema_uri: the schema its data was validated against.
        data: the data, canonical JSON text.
        emitted_by_step: the Step that emitted it, else None.
        ts: ISO 8601 UTC.
    """

    fact_id: str
    run_id: str
    flow_id: str
    seq: int
    type: str
    schema_uri: str
    data: str
    emitted_by_step: str | None
    ts: str


class CheckpointRow(msgspec.Struct, frozen=True, gc=False):
    """A stored checkpoint, content-addressed (NERVE-4005).

    Attributes:
        checkpoint_id: ``ckp_`` + 32 hex digits of ``hash``.
        run_id: its Run.
        step_id: the Step it cites or that made it, else None.
        hash: ``b3:<hex>`` of run, snapshot and cursor.
        snapshot: the interpreter's snapshot, canonical JSON text.
        cursor: the server's cursor of the Run, canonical JSON text (NERVE-4008).
        ts: ISO 8601 UTC.
    """

    checkpoint_id: str
    run_id: str
    step_id: str | None
    hash: str
    snapshot: str
    cursor: str
    ts: str


class RunUsage(msgspec.Struct, frozen=True):
    """Sums over a Run's Steps (POLICY-3000).

    Attributes:
        tokens_in: prompt tokens.
        tokens_out: output tokens.
        cost_usd: cost (USD; ``0.0`` for a Run with no Steps).
        wall_ms: summed Step wall time (ms).
        counts: Steps by status, e.g. ``{"succeeded": 2, "running": 1}``.
    """

    tokens_in: int
    tokens_out: int
    cost_usd: float
    wall_ms: int
    counts: dict[str, int]


class LlmJobRow(msgspec.Struct, frozen=True):
    """One job record.

    Attributes:
        step_id: the job's ``llm_call`` Step (its id is the job id).
        tenant: the tenant that enqueued it.
        run_id: the Step's Run.
        model: the model id as enqueued.
        enqueued_at: RFC 3339 UTC with ``Z`` (the Step's ``created_at``).
        job_hash: ``b3:`` hash of what identifies the job beyond the Step's input
            (metadata, attachment names and hashes).
        metadata: the metadata as compact JSON, or None.
        attachments: ``[{"name", "sha256", "size"}]`` as compact JSON, by name.
    """

    step_id: str
    tenant: str
    run_id: str
    model: str
    enqueued_at: str
    job_hash: str
    metadata: str | None
    attachments: str
