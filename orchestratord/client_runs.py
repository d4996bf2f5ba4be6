"""The Run lifecycle routes of the Python clients as Calls: close a Run and read its run
stream (NERVE-4107; the routes are NERVE-4100, NERVE-4101 and NERVE-4103).

Both :class:`~orchestratord.client_async.AsyncClient` and
:class:`~orchestratord.client_sync.Client` send these (``close_run``,
``run_stream_ticket``, ``stream_run``);
nothing here does I/O (NERVE-4110).
"""

from __future__ import annotations

from urllib.parse import quote

import msgspec

from contracts.run_life import RUN_END_EVENT, RunEndData, RunFrame
from contracts.runs import Run
from contracts.tickets import RunStreamTicket
from orchestratord.client_calls import Call, StreamCall

__all__ = ["RunEvent", "close_run", "run_stream_ticket", "stream_run"]

_frame = msgspec.json.Decoder(RunFrame)
_end = msgspec.json.Decoder(RunEndData)
_run = msgspec.json.Decoder(Run)
_ticket = msgspec.json.Decoder(RunStreamTicket)


class RunEvent(msgspec.Struct, frozen=True):
    """One event of a run stream (NERVE-4100).

    Attributes:
        position: its ``id:``, the frame's run position (for ``run_end``: the Run's frame
            count); pass the last one as ``last_event_id`` to resume.
        event: the frame type (``token``, ``end``, ...), or ``run_end``.
        data: the :class:`RunFrame` (the Step, its ``seq`` and the frame's data as raw
            JSON), or the :class:`RunEndData` of ``run_end``.
    """

    position: int
    event: str
    data: RunFrame | RunEndData


def _event(seq: int | None, event: str, data: str) -> RunEvent | None:
    if seq is None:
        return None  # an event without a run position: not a frame of the Run's log
    if event == RUN_END_EVENT:
        return RunEvent(seq, event, _end.decode(data))
    return RunEvent(seq, event, _frame.decode(data))


def close_run(run_id: str, status: str) -> Call[Run]:
    """``POST /v1/runs/{run_id}/close`` with ``completed``, ``failed`` or ``cancelled``
    (NERVE-4103): idempotent; the closed Run, with its ``summary`` once none of its
    Steps is live. ``Conflict`` when closed with another status, or ``completed`` with
    live Steps; ``NotFound`` for no such Run (or another tenant's)."""
    return Call("POST", f"/v1/runs/{quote(run_id, safe=':')}/close",
                lambda resp: _run.decode(resp.content), body={"status": status})


def run_stream_ticket(run_id: str) -> Call[RunStreamTicket]:
    """``POST /v1/runs/{run_id}/stream-ticket``: a 60 s ticket that opens the Run's
    stream without the bearer token, for a browser's ``EventSource`` (NERVE-4054);
    ``NotFound`` for no such Run (or another tenant's)."""
    return Call("POST", f"/v1/runs/{quote(run_id, safe=':')}/stream-ticket",
                lambda resp: _ticket.decode(resp.content), idempotent=False)


def stream_run(run_id: str, *, last_event_id: int | None = None) -> StreamCall[RunEvent]:
    """``GET /v1/runs/{run_id}/stream``: the events of the Run's stream until its
    ``run_end`` (NERVE-4100, NERVE-4101); nothing when ``last_event_id`` is at or after
    it (the server's 204). A stream cut before ``run_end`` is ``ERR_STREAM_DISCONNECTED``
    with ``kind`` ``"run"`` and the last position received."""
    return StreamCall("GET", f"/v1/runs/{quote(run_id, safe=':')}/stream", subject=run_id,
                      decode=_event, kind="run", terminals=frozenset({RUN_END_EVENT}),
                      last_event_id=last_event_id)
