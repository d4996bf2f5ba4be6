"""Checkpoint wire types: snapshots of interpreter state for replay and forks (NERVE-4005)."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.limits import Id

__all__ = ["Checkpoint", "CheckpointCreate"]


class CheckpointCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/checkpoint``: the interpreter's state, as JSON, at
    most ``max_recorded_value_bytes`` once encoded (POLICY-3030)."""

    snapshot: Any
    step_id: Id | None = None


class Checkpoint(msgspec.Struct):
    """A stored checkpoint: the client's snapshot and the server's cursor at that moment.

    ``cursor`` holds ``steps_high_water`` (the highest Step ordinal of the Run, -1 for
    none), ``steps_unfinished`` (ordinals of its Steps still queued or running),
    ``usage`` (tokens, USD) and ``facts_high_water`` (last Fact seq, -1 for none); its
    size does not grow with the Run (NERVE-4008). Checkpoints stored before schema v6
    hold ``steps_done`` (client_tokens of the finished Steps) instead of the first two.
    The id is a content address of (run, snapshot, cursor).
    """

    checkpoint_id: str
    run_id: str
    step_id: str | None
    hash: str
    snapshot: Any
    cursor: dict[str, Any]
    ts: str
