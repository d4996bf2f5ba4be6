"""Wire types of a Run's lifecycle: closing it, its provenance summary and its run-level
SSE stream (NERVE-4100..NERVE-4106).

* ``POST /v1/runs/{run_id}/close`` takes a :class:`RunClose`; the closed Run carries a
  :class:`RunSummary` once none of its Steps is live (NERVE-4103, NERVE-4104).
* ``GET /v1/runs/{run_id}/stream`` writes every durable frame of every Step of the Run as
  a :class:`RunFrame` (``event:`` the frame type, ``id:`` the frame's run position), then,
  once the Run is closed and has no live Step, one ``run_end`` event carrying a
  :class:`RunEndData` (NERVE-4100, NERVE-4101).
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["RUN_END_EVENT", "RunClose", "RunEndData", "RunFrame", "RunSummary"]

RUN_END_EVENT = "run_end"
"""The SSE event name of the last event of a run stream (NERVE-4101)."""


class RunClose(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/close`` (NERVE-4103).

    ``completed`` is refused with 409 ``CONFLICT`` while a Step of the Run is ``queued``
    or ``running``; ``failed`` and ``cancelled`` cancel such Steps ("run closed").
    """

    status: Literal["completed", "failed", "cancelled"]


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The provenance summary of a closed Run, fixed once none of its Steps is live
    (NERVE-4104). Units: tokens, USD, milliseconds.

    Attributes:
        status: the Run's final status.
        mode: ``record``, ``replay`` or ``strict_replay``.
        seed: the Run seed.
        steps: how many Steps the Run has (every attempt counts, NERVE-4105).
        steps_by_type: ``{step type: {status: count}}``, names in order.
        tokens_in: prompt tokens of every Step.
        tokens_out: output tokens of every Step.
        cost_usd: cost of every Step (USD).
        wall_ms: summed Step wall time (ms).
        engines: the distinct ``engine@engine_version`` of the LLM Steps, sorted.
        models: the distinct model ids of the LLM Steps, sorted.
        model_hashes: the distinct ``model_hash`` values, sorted.
        engine_builds: the distinct engine build fingerprints, sorted.
        steps_hash: ``b3:<hex>`` of the canonical JSON list, in submission order, of
            ``[client_token, type, input_hash, status, terminal_hash]`` per Step, where
            ``terminal_hash`` is the ``b3:<hex>`` of the data bytes of its terminal
            frame (``null`` for a Step with none). A ``replay`` Run of a recording with
            one attempt per token has the recording's ``steps_hash``.
    """

    status: str
    mode: str
    seed: int
    steps: int
    steps_by_type: dict[str, dict[str, int]]
    tokens_in: int
    tokens_out: int
    cost_usd: float
    wall_ms: int
    engines: list[str]
    models: list[str]
    model_hashes: list[str]
    engine_builds: list[str]
    steps_hash: str


class RunFrame(msgspec.Struct, frozen=True):
    """The ``data`` of one event of a run stream (NERVE-4100): a durable frame of one
    Step of the Run. The SSE ``event:`` is the frame's type (``token``, ``end``, ...)
    and its ``id:`` the frame's run position, 0, 1, ... in the order the Run's frames
    were committed.

    Attributes:
        step_id: the Step the frame belongs to.
        step_type: that Step's type (``llm_call``, ...).
        seq: the frame's sequence number in its Step's own stream.
        data: the frame's data, byte for byte as the Step's own stream carries it.
    """

    step_id: str
    step_type: str
    seq: int
    data: msgspec.Raw


class RunEndData(msgspec.Struct, frozen=True):
    """The ``data`` of the ``run_end`` event that ends a run stream (NERVE-4101); its
    ``id:`` is the Run's frame count (one past the last frame's position).

    Attributes:
        run_id: the Run.
        status: its final status (``completed``, ``failed`` or ``cancelled``).
        summary: its provenance summary (NERVE-4104).
    """

    run_id: str
    status: str
    summary: RunSummary | None = None
