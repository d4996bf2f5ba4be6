"""The async Python client: a thin shell over :mod:`orchestratord.client_calls` on
``httpx.AsyncClient`` (NERVE-4110).

Every public method sends one :class:`~orchestratord.client_calls.Call` built by
:mod:`orchestratord.client_routes` (see there for each route's behaviour) or reads one
:class:`~orchestratord.client_calls.StreamCall`. :class:`~orchestratord.client_sync.Client`
is the same shell on ``httpx.Client``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
import msgspec

from contracts.checkpoints import Checkpoint
from contracts.errors import OrchestratorError
from contracts.facts import Fact
from contracts.flows import Flow, FlowCreated
from contracts.pools import Capabilities, PoolInfo
from contracts.recordings import RecordingImported
from contracts.runs import Run
from contracts.steps import CancelAccepted, RenderedPrompt, Step
from contracts.tickets import RunStreamTicket, StreamTicket
from orchestratord import client_browse
from orchestratord import client_recording_calls as recording_calls
from orchestratord import client_routes as routes
from orchestratord import client_runs as run_routes
from orchestratord.client_calls import (
    Call,
    FrameReader,
    RetryPolicy,
    StreamCall,
    error_of,
    with_token,
)
from orchestratord.client_frames import Frame, StepResult, SubmittedStream
from orchestratord.client_llm import AsyncLlm
from orchestratord.client_pools import AsyncPoolCalls
from orchestratord.client_routes import Page
from orchestratord.client_runs import RunEvent
from orchestratord.client_tokens import StepTokens

__all__ = ["AsyncClient"]

T = TypeVar("T")
E = TypeVar("E")


async def _frames(resp: httpx.Response, reader: FrameReader[E]) -> AsyncIterator[E]:
    """The frames of an open stream answer until its terminal frame (NERVE-4111).

    Raises:
        StreamDisconnected: it ended, or its connection broke, before (NERVE-4072).
    """
    try:
        async for chunk in resp.aiter_bytes():
            for frame in reader.feed(chunk):
                yield frame
            if reader.done:
                return
    except httpx.TransportError as exc:
        raise reader.broken(exc) from exc
    if (cut := reader.ended()) is not None:
        raise cut


class AsyncClient(AsyncPoolCalls):
    """Talks to one orchestratord, asynchronously (NERVE-4110).

    Args:
        base_url: e.g. ``http://127.0.0.1:8787``.
        token: bearer token (``Authorization: Bearer``); None for a no-auth server.
        transport: an httpx transport (``httpx.MockTransport`` or ``ASGITransport`` in
            tests); None for the network.
        timeout: per-request timeout (s, or an ``httpx.Timeout``); streams keep only its
            connect timeout and have no read timeout.
        max_retries: attempts after the first for a retriable failure of an idempotent
            call; 0, the default, never retries (NERVE-4112).
        timeout_s: the former name of ``timeout``; it wins when given.
        sleep: waits between retries (s); the caller's own clock, e.g. a fake in tests
            (the client runs in the caller's process, so its default is real time).
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout: float | httpx.Timeout | None = 30.0, max_retries: int = 0,
                 timeout_s: float | None = None,
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport,
                                       headers=headers,
                                       timeout=timeout if timeout_s is None else timeout_s)
        self._retry = RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._tokens = StepTokens()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as :class:`RetryPolicy` allows) and parse its answer.

        Raises:
            OrchestratorError: the typed error of a refusal.
            httpx.TransportError: the request could not be sent or answered.
        """
        attempt = 0
        while True:
            try:
                resp = await self._http.send(call.request(self._http))
                if call.errors and resp.status_code >= 400:
                    raise error_of(resp)
                return call.parse(resp)
            except (httpx.TransportError, OrchestratorError) as exc:
                delay = self._retry.delay(call.idempotent, attempt, exc)
                if delay is None:
                    raise
            attempt += 1
            await self._sleep(delay)

    @contextlib.asynccontextmanager
    async def open(self, call: StreamCall[Any]) -> AsyncIterator[httpx.Response]:
        """An open stream answer with status < 400 (retrying its opening as :meth:`send`
        does; never once a frame has been read).

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
        """
        attempt = 0
        while True:
            try:
                resp = await self._http.send(call.request(self._http), stream=True)
                if resp.status_code < 400:
                    break
                await resp.aread()
                await resp.aclose()
                raise error_of(resp)
            except (httpx.TransportError, OrchestratorError) as exc:
                delay = self._retry.delay(call.idempotent, attempt, exc)
                if delay is None:
                    raise
            attempt += 1
            await self._sleep(delay)
        try:
            yield resp
        finally:
            await resp.aclose()

    async def frames(self, call: StreamCall[E]) -> AsyncIterator[E]:
        """The typed events of ``call`` until its terminal event (NERVE-4111).

        Raises:
            OrchestratorError: the stream was refused.
            StreamDisconnected: it ended before its terminal frame (NERVE-4072).
        """
        async with self.open(call) as resp:
            if resp.status_code == 204:
                return
            async for frame in _frames(resp, call.reader()):
                yield frame

    @property
    def llm(self) -> AsyncLlm:
        """The client contract's LLM lifecycle: capabilities, enqueue, stream, cancel
        (NERVE-4089)."""
        return AsyncLlm(self)

    # -- routes: one line each (see orchestratord.client_routes) ----------------------

    async def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return await self.send(routes.health())

    async def ready(self) -> bool:
        """True when ``GET /ready`` answers 200."""
        return await self.send(routes.ready())

    async def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return await self.send(routes.metrics())

    async def capabilities(self) -> Capabilities:
        """``GET /v1/capabilities``."""
        return await self.send(routes.capabilities())

    async def pools(self) -> list[PoolInfo]:
        """``GET /v1/pools``."""
        return await self.send(routes.pools())

    async def get_pool(self, pool_id: str) -> PoolInfo:
        """``GET /v1/pools/{id}``."""
        return await self.send(routes.get_pool(pool_id))

    async def create_flow(self, ast_ir: Any, *, tools: list[dict[str, Any]] | None = None,
                          config: dict[str, Any] | None = None,
                          labels: dict[str, str] | None = None) -> FlowCreated:
        """``POST /v1/flows``."""
        return await self.send(routes.create_flow(ast_ir, tools=tools, config=config,
                                                  labels=labels))

    async def get_flow(self, flow_id: str) -> Flow:
        """``GET /v1/flows/{id}``."""
        return await self.send(routes.get_flow(flow_id))

    async def get_flow_by_hash(self, flow_hash: str) -> Flow:
        """``GET /v1/flows:by-hash/{hash}``."""
        return await self.send(routes.get_flow_by_hash(flow_hash))

    async def list_flows(self, *, limit: int = 100, after: str | None = None) -> Page[Flow]:
        """``GET /v1/flows``: ``(flows, next_after)`` (NERVE-4061)."""
        return await self.send(routes.list_flows(limit=limit, after=after))

    async def list_runs(self, flow_id: str, *, mode: str | None = None,
                        status: str | None = None, label: str | None = None,
                        limit: int = 100, after: str | None = None) -> Page[Run]:
        """``GET /v1/flows/{id}/runs``: ``(runs, next_after)`` (NERVE-4061)."""
        return await self.send(routes.list_runs(flow_id, mode=mode, status=status,
                                                label=label, limit=limit, after=after))

    async def list_all_runs(self, *, mode: str | None = None, status: str | None = None,
                            label: str | None = None, limit: int = 100,
                            after: str | None = None) -> Page[Run]:
        """``GET /v1/runs``: ``(runs, next_after)`` across Flows (REC-7051)."""
        return await self.send(client_browse.list_all_runs(mode=mode, status=status, label=label,
                                                        limit=limit, after=after))

    async def recording(self, run_id: str) -> bytes:
        """``GET /v1/runs/{run_id}/recording``: the Run's recording file (REC-7010)."""
        return await self.send(recording_calls.export_recording(run_id))

    async def import_recording(self, data: bytes) -> RecordingImported:
        """``POST /v1/recordings``: import a recording file as a new Run (REC-7011)."""
        return await self.send(recording_calls.import_recording(data))

    async def list_flow_facts(self, flow_id: str, *, type: str | None = None,
                              limit: int = 1000, after: str | None = None) -> Page[Fact]:
        """``GET /v1/flows/{id}/facts``: ``(facts, next_after)`` (NERVE-4075)."""
        return await self.send(routes.list_flow_facts(flow_id, type=type, limit=limit,
                                                      after=after))

    async def create_run(self, flow_id: str, **fields: Any) -> Run:
        """``POST /v1/flows/{id}/runs`` with RunCreate fields (mode, seed, replay_of...)."""
        return await self.send(routes.create_run(flow_id, fields))

    async def get_run(self, run_id: str) -> Run:
        """``GET /v1/runs/{id}``."""
        return await self.send(routes.get_run(run_id))

    async def cancel_run(self, run_id: str) -> Run:
        """``POST /v1/runs/{id}/cancel``."""
        return await self.send(routes.cancel_run(run_id))

    async def close_run(self, run_id: str, status: str) -> Run:
        """``POST /v1/runs/{id}/close`` (NERVE-4107, NERVE-4103)."""
        return await self.send(run_routes.close_run(run_id, status))

    async def list_steps(self, run_id: str, *, limit: int = 100,
                         after: str | None = None) -> Page[Step]:
        """``GET /v1/runs/{id}/steps``: ``(steps, next_after)`` (NERVE-4061)."""
        return await self.send(routes.list_steps(run_id, limit=limit, after=after))

    async def submit_step(self, run_id: str, body: dict[str, Any]) -> Step:
        """``POST /v1/runs/{id}/steps``; a missing ``client_token`` is derived (NERVE-4071)."""
        return await self.send(routes.submit_step(run_id, with_token(self._tokens, run_id,
                                                                     body)))

    async def get_step(self, step_id: str) -> Step:
        """``GET /v1/steps/{id}``."""
        return await self.send(routes.get_step(step_id))

    async def get_prompt(self, step_id: str) -> RenderedPrompt:
        """``GET /v1/steps/{id}/prompt`` (NERVE-4092)."""
        return await self.send(routes.get_prompt(step_id))

    async def cancel_step(self, step_id: str) -> Step | CancelAccepted:
        """``POST /v1/steps/{id}/cancel`` (NERVE-4070)."""
        return await self.send(routes.cancel_step(step_id))

    async def stream_ticket(self, step_id: str) -> StreamTicket:
        """``POST /v1/steps/{id}/stream-ticket`` (NERVE-4054)."""
        return await self.send(routes.stream_ticket(step_id))

    async def append_fact(self, run_id: str, fact: dict[str, Any]) -> Fact:
        """``POST /v1/runs/{id}/facts``."""
        return await self.send(routes.append_fact(run_id, fact))

    async def facts(self, run_id: str, **filters: Any) -> list[Fact]:
        """``GET /v1/runs/{id}/facts`` with ``type``, ``step``, ``since_seq``, ``limit``."""
        return await self.send(routes.facts(run_id, filters))

    async def get_fact(self, fact_id: str) -> Fact:
        """``GET /v1/facts/{id}`` (NERVE-4074)."""
        return await self.send(routes.get_fact(fact_id))

    async def create_checkpoint(self, run_id: str, snapshot: Any, **fields: Any) -> Checkpoint:
        """``POST /v1/runs/{id}/checkpoint`` with ``snapshot`` and CheckpointCreate fields."""
        return await self.send(routes.create_checkpoint(run_id, {"snapshot": snapshot,
                                                                 **fields}))

    async def list_checkpoints(self, run_id: str, *, limit: int = 100,
                               after: str | None = None) -> Page[Checkpoint]:
        """``GET /v1/runs/{id}/checkpoints``: ``(checkpoints, next_after)``."""
        return await self.send(routes.list_checkpoints(run_id, limit=limit, after=after))

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """``GET /v1/checkpoints/{id}`` (NERVE-4074)."""
        return await self.send(routes.get_checkpoint(checkpoint_id))

    # -- streams -----------------------------------------------------------------------

    def stream(self, step_id: str, *, last_event_id: int | None = None) -> AsyncIterator[Frame]:
        """The Step's typed frames until its terminal frame (NERVE-4111).

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
            StreamDisconnected: it ended before its terminal frame (NERVE-4072).
        """
        return self.frames(routes.stream(step_id, last_event_id=last_event_id))

    def stream_facts(self, run_id: str, *,
                     last_event_id: int | None = None) -> AsyncIterator[Fact]:
        """A Run's Facts as they are appended, until the server ends the stream; a broken
        connection is ``StreamDisconnected`` of ``kind`` ``"run"``."""
        return self.frames(routes.stream_facts(run_id, last_event_id=last_event_id))

    async def run_stream_ticket(self, run_id: str) -> RunStreamTicket:
        """``POST /v1/runs/{id}/stream-ticket`` (NERVE-4054)."""
        return await self.send(run_routes.run_stream_ticket(run_id))

    def stream_run(self, run_id: str, *,
                   last_event_id: int | None = None) -> AsyncIterator[RunEvent]:
        """The Run's stream until ``run_end`` (NERVE-4107, NERVE-4100)."""
        return self.frames(run_routes.stream_run(run_id, last_event_id=last_event_id))

    @contextlib.asynccontextmanager
    async def submit_stream(self, run_id: str, body: dict[str, Any], *,
                            last_event_id: int | None = None) -> \
            AsyncIterator[SubmittedStream]:
        """Submit a Step and read its stream in the same request (STREAM-2010). A missing
        ``client_token`` is derived (NERVE-4071), each equal body being a new occurrence:
        to resume after :class:`StreamDisconnected`, read :meth:`stream` of its
        ``step_id`` from its ``last_event_id``. A server that answers with the Step as
        JSON is read as before: the Step, then its ``GET`` stream.

        Raises:
            OrchestratorError: the submission was refused (its typed subclass).
        """
        call = routes.submit_stream(run_id, with_token(self._tokens, run_id, body),
                                    last_event_id=last_event_id)
        async with self.open(call) as resp:
            step_id = routes.submitted(resp)
            if step_id is None:
                step = msgspec.json.decode(await resp.aread(), type=Step)
                yield SubmittedStream(step.step_id, resp.status_code == 201,
                                      self.stream(step.step_id, last_event_id=last_event_id))
                return
            reader = dataclasses.replace(call, subject=step_id).reader()
            yield SubmittedStream(step_id, resp.status_code == 201, _frames(resp, reader))

    async def run_step(self, run_id: str, body: dict[str, Any]) -> StepResult:
        """Submit a Step, read its stream to the end in the same request
        (:meth:`submit_stream`), then read the finished Step."""
        async with self.submit_stream(run_id, body) as submitted:
            frames = [f async for f in submitted.frames()]
        return StepResult(step=await self.get_step(submitted.step_id), frames=frames)
