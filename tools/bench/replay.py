"""Replay time / record time of the demo flow (three ``llm_call`` Steps).

Delegates to :func:`tools.demo.run_flow_modes`, which records the flow, replays
it and strict-replays it, timing each mode from its first Step submission to its last
``end`` frame.
"""

from __future__ import annotations

import pathlib

import msgspec

from orchestratord.client import OrchestratorClient
from tools.demo import run_flow_modes

__all__ = ["ModeTime", "ReplayReport", "default_document", "measure_replay"]

_DOCUMENT_CHARS = 1500  # as ``python -m tools.demo`` does


class ModeTime(msgspec.Struct, frozen=True):
    """One mode of the flow.

    Attributes:
        mode: ``record``, ``replay`` or ``strict_replay``.
        steps: Steps run.
        tokens: token frames streamed over all Steps.
        wall_ms: first submission to last ``end`` frame (ms).
        engine_requests: engine requests the server counted during the mode.
    """

    mode: str
    steps: int
    tokens: int
    wall_ms: float
    engine_requests: int


class ReplayReport(msgspec.Struct, frozen=True):
    """Result of :func:`measure_replay`.

    Attributes:
        document: the file whose first 1500 characters the flow summarises.
        modes: record, replay, strict_replay, in that order.
        replay_over_record: replay wall_ms / record wall_ms.
        strict_replay_over_record: strict_replay wall_ms / record wall_ms.
        replay_byte_identical: replay's token stream equals record's.
        strict_replay_byte_identical: strict_replay's token stream equals record's.
    """

    document: str
    modes: list[ModeTime]
    replay_over_record: float
    strict_replay_over_record: float
    replay_byte_identical: bool
    strict_replay_byte_identical: bool


def default_document() -> pathlib.Path:
    """The file ``python -m tools.demo`` summarises by default (same search order)."""
    for candidate in (pathlib.Path("specs/20_stream_and_replay.md"), pathlib.Path("README.md")):
        if candidate.is_file():
            return candidate
    import tools.demo as demo

    return pathlib.Path(demo.__file__)


async def measure_replay(client: OrchestratorClient, document: pathlib.Path,
                         text: str) -> ReplayReport:
    """Record, replay and strict-replay the demo flow and compare their times.

    Args:
        client: connected to the server under test.
        document: the file ``text`` was read from (reported only).
        text: the file's content; its first 1500 characters are summarised.

    Returns:
        Each mode's wall time (ms) and the ratios to the record time.
    """
    raw = await run_flow_modes(client, text[:_DOCUMENT_CHARS])
    modes = [ModeTime(mode=str(m["mode"]), steps=int(m["steps"]), tokens=int(m["tokens"]),
                      wall_ms=float(m["wall_ms"]), engine_requests=int(m["engine_requests"]))
             for m in raw["modes"]]
    by_mode = {m.mode: m.wall_ms for m in modes}
    return ReplayReport(
        document=str(document), modes=modes,
        replay_over_record=round(by_mode["replay"] / by_mode["record"], 4),
        strict_replay_over_record=round(by_mode["strict_replay"] / by_mode["record"], 4),
        replay_byte_identical=bool(raw["replay_byte_identical"]),
        strict_replay_byte_identical=bool(raw["strict_replay_byte_identical"]),
    )
