"""The Run lifecycle methods of the async Python client: close a Run and read its run
stream (NERVE-4107; the routes are NERVE-4100, NERVE-4101 and NERVE-4103).

:class:`RunLifeMethods` is mixed into :class:`orchestratord.client.OrchestratorClient`;
it uses the client's ``_http`` connection pool and ``_call`` error mapping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from contracts.errors import ErrorEnvelope, error_from_envelope
from contracts.run_life import RUN_END_EVENT, RunEndData, RunFrame
from contracts.runs import Run
from orchestratord.client_errors import StreamDisconnected

__all__ = ["RunEvent", "RunLifeMethods"]

_frame = msgspec.json.Decoder(RunFrame)
_end = msgspec.json.Decoder(RunEndData)
_env = msgspec.json.Decoder(ErrorEnvelope)


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


class RunLifeMethods:
    """Run lifecycle routes of the client (a mixin over ``_http`` and ``_call``)."""

    _http: httpx.AsyncClient

    async def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        raise NotImplementedError  # the client's own, which maps errors to their types

    async def close_run(self, run_id: str, status: str) -> Run:
        """``POST /v1/runs/{run_id}/close`` (NERVE-4103).

        Args:
            run_id: the Run.
            status: ``completed``, ``failed`` or ``cancelled``.

        Returns:
            The closed Run (with its ``summary`` once none of its Steps is live).

        Raises:
            Conflict: closed with another status, or ``completed`` with live Steps.
            NotFound: no such Run (or another tenant's).
        """
        resp = await self._call("POST", f"/v1/runs/{run_id}/close", {"status": status})
        return msgspec.json.decode(resp.content, type=Run)

    async def stream_run(self, run_id: str, *, last_event_id: int | None = None) -> \
            AsyncIterator[RunEvent]:
        """Yield the events of the Run's stream until its ``run_end`` event (NERVE-4100,
        NERVE-4101); nothing when ``last_event_id`` is at or after it (the server's 204).

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
            StreamDisconnected: it ended before ``run_end`` (``step_id`` is the Run's
                id, ``last_event_id`` the last position received).
        """
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        last = last_event_id
        async with aconnect_sse(self._http, "GET", f"/v1/runs/{run_id}/stream",
                                headers=headers, timeout=None) as source:
            status = source.response.status_code
            if status >= 400:
                await source.response.aread()
                raise error_from_envelope(_env.decode(source.response.content))
            if status == 204:
                return
            try:
                async for sse in source.aiter_sse():
                    if not sse.data or not sse.id:
                        continue  # a ": keep-alive" comment
                    last = int(sse.id)
                    if sse.event == RUN_END_EVENT:
                        yield RunEvent(last, sse.event, _end.decode(sse.data))
                        return
                    yield RunEvent(last, sse.event, _frame.decode(sse.data))
            except httpx.TransportError as exc:
                raise StreamDisconnected(run_id, last, f"{type(exc).__name__}: {exc}") from exc
        raise StreamDisconnected(run_id, last, "the server closed the run stream")
