"""The sync Python client: a thin shell over :mod:`orchestratord.client_calls` on
``httpx.Client`` (NERVE-4110), as openai-python's ``OpenAI`` beside ``AsyncOpenAI``.

Every public method sends one :class:`~orchestratord.client_calls.Call` built by
:mod:`orchestratord.client_routes` (see there for each route's behaviour) or reads one
:class:`~orchestratord.client_calls.StreamCall`.
:class:`~orchestratord.client_async.AsyncClient` is the same shell on
``httpx.AsyncClient``; both have the same methods, with the same arguments, answers and
errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

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
from orchestratord.client_frames import Frame, StepResult, SyncSubmittedStream
from orchestratord.client_llm import Llm
from orchestratord.client_pools import PoolCalls
from orchestratord.client_routes import Page
from orchestratord.client_runs import RunEvent
from orchestratord.client_tokens import StepTokens

__all__ = ["Client"]

T = TypeVar("T")
E = TypeVar("E")


def _frames(resp: httpx.Response, reader: FrameReader[E]) -> Iterator[E]:
    """The frames of an open stream answer until its terminal frame (NERVE-4111).

    Raises:
        StreamDisconnected: it ended, or its connection broke, before (NERVE-4072).
    """
    try:
        for chunk in resp.iter_bytes():
            yield from reader.feed(chunk)
            if reader.done:
                return
    except httpx.TransportError as exc:
        raise reader.broken(exc) from exc
    if (cut := reader.ended()) is not None:
        raise cut


class Client(PoolCalls):
    """Talks to one orchestratord, blocking (NERVE-4110).

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
                 transport: httpx.BaseTransport | None = None,
                 timeout: float | httpx.Timeout | None = 30.0, max_retries: int = 0,
                 timeout_s: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, transport=transport,
                                       headers=headers,
                                       timeout=timeout if timeout_s is None else timeout_s)
        self._retry = RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._tokens = StepTokens()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send ``call`` (retrying as :class:`RetryPolicy` allows) and parse its answer.

        Raises:
            OrchestratorError: the typed error of a refusal.
            httpx.TransportError: the request could not be sent or answered.
        """
        attempt = 0
        while True:
            try:
                resp = self._http.send(call.request(self._http))
                if call.errors and resp.status_code >= 400:
                    raise error_of(resp)
                return call.parse(resp)
            except (httpx.TransportError, OrchestratorError) as exc:
                delay = self._retry.delay(call.idempotent, attempt, exc)
                if delay is None:
                    raise
            attempt += 1
            self._sleep(delay)

    @contextlib.contextmanager
    def open(self, call: StreamCall[Any]) -> Iterator[httpx.Response]:
        """An open stream answer with status < 400 (retrying its opening as :meth:`send`
        does; never once a frame has been read).

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
        """
        attempt = 0
        while True:
            try:
                resp = self._http.send(call.request(self._http), stream=True)
                if resp.status_code < 400:
                    break
                resp.read()
                resp.close()
                raise error_of(resp)
            except (httpx.TransportError, OrchestratorError) as exc:
                delay = self._retry.delay(call.idempotent, attempt, exc)
                if delay is None:
                    raise
            attempt += 1
            self._sleep(delay)
        try:
            yield resp
        finally:
            resp.close()

    def frames(self, call: StreamCall[E]) -> Iterator[E]:
        """The typed events of ``call`` until its terminal event (NERVE-4111).

        Raises:
            OrchestratorError: the stream was refused.
            StreamDisconnected: it ended before its terminal frame (NERVE-4072).
        """
        with self.open(call) as resp:
            if resp.status_code == 204:
                return
            yield from _frames(resp, call.reader())

    @property
    def llm(self) -> Llm:
        """The client contract's LLM lifecycle: capabilities, enqueue, stream, cancel
        (NERVE-4089)."""
        return Llm(self)

    # -- routes: one line each (see orchestratord.client_routes) ----------------------

    def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return self.send(routes.health())

    def ready(self) -> bool:
        """True when ``GET /ready`` answers 200."""
        return self.send(routes.ready())

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self.send(routes.metrics())

    def capabilities(self) -> Capabilities:
        """``GET /v1/capabilities``."""
        return self.send(routes.capabilities())

    def pools(self) -> list[PoolInfo]:
        """``GET /v1/pools``."""
        return self.send(routes.pools())

    def get_pool(self, pool_id: str) -> PoolInfo:
        """``GET /v1/pools/{id}``."""
        return self.send(routes.get_pool(pool_id))

    def create_flow(self, ast_ir: Any, *, tools: list[dict[str, Any]] | None = None,
                          config: dict[str, Any] | None = None,
                          labels: dict[str, str] | None = None) -> FlowCreated:
        """``POST /v1/flows``."""
        return self.send(routes.create_flow(ast_ir, tools=tools, config=config,
                                                  labels=labels))

    def get_flow(self, flow_id: str) -> Flow:
        """``GET /v1/flows/{id}``."""
        return self.send(routes.get_flow(flow_id))

    def get_flow_by_hash(self, flow_hash: str) -> Flow:
        """``GET /v1/flows:by-hash/{hash}``."""
        return self.send(routes.get_flow_by_hash(flow_hash))

    def list_flows(self, *, limit: int = 100, after: str | None = None) -> Page[Flow]:
        """``GET /v1/flows``: ``(flows, next_after)`` (NERVE-4061)."""
        return self.send(routes.list_flows(limit=limit, after=after))

    def list_runs(self, flow_id: str, *, mode: str | None = None,
                        status: str | None = None, label: str | None = None,
                        limit: int = 100, after: str | None = None) -> Page[Run]:
        """``GET /v1/flows/{id}/runs``: ``(runs, next_after)`` (NERVE-4061)."""
        return self.send(routes.list_runs(flow_id, mode=mode, status=status,
                                                label=label, limit=limit, after=after))

    def list_all_runs(self, *, mode: str | None = None, status: str | None = None,
                      label: str | None = None, limit: int = 100,
                      after: str | None = None) -> Page[Run]:
        """``GET /v1/runs``: ``(runs, next_after)`` across Flows (REC-7051)."""
        return self.send(client_browse.list_all_runs(mode=mode, status=status, label=label,
                                                     limit=limit, after=after))

    def recording(self, run_id: str) -> bytes:
        """``GET /v1/runs/{run_id}/recording``: the Run's recording file (REC-7010)."""
        return self.send(recording_calls.export_recording(run_id))

    def import_recording(self, data: bytes) -> RecordingImported:
        """``POST /v1/recordings``: import a recording file as a new Run (REC-7011)."""
        return self.send(recording_calls.import_recording(data))

    def list_flow_facts(self, flow_id: str, *, type: str | None = None,
                        limit: int = 1000, after: str | None = None) -> Page[Fact]:
        """``GET /v1/flows/{id}/facts``: ``(facts, next_after)`` (NERVE-4075)."""
        return self.send(routes.list_flow_facts(flow_id, type=type, limit=limit,
                                                      after=after))

    def create_run(self, flow_id: str, **fields: Any) -> Run:
        """``POST /v1/flows/{id}/runs`` with RunCreate fields (mode, seed, replay_of...)."""
        return self.send(routes.create_run(flow_id, fields))

    def get_run(self, run_id: str) -> Run:
        """``GET /v1/runs/{id}``."""
        return self.send(routes.get_run(run_id))

    def cancel_run(self, run_id: str) -> Run:
        """``POST /v1/runs/{id}/cancel``."""
        return self.send(routes.cancel_run(run_id))

    def close_run(self, run_id: str, status: str) -> Run:
        """``POST /v1/runs/{id}/close`` (NERVE-4107, NERVE-4103)."""
        return self.send(run_routes.close_run(run_id, status))

    def list_steps(self, run_id: str, *, limit: int = 100,
                         after: str | None = None) -> Page[Step]:
        """``GET /v1/runs/{id}/steps``: ``(steps, next_after)`` (NERVE-4061)."""
        return self.send(routes.list_steps(run_id, limit=limit, after=after))

    def submit_step(self, run_id: str, body: dict[str, Any]) -> Step:
        """``POST /v1/runs/{id}/steps``; a missing ``client_token`` is derived (NERVE-4071)."""
        return self.send(routes.submit_step(run_id, with_token(self._tokens, run_id,
                                                                     body)))

    def get_step(self, step_id: str) -> Step:
        """``GET /v1/steps/{id}``."""
        return self.send(routes.get_step(step_id))

    def get_prompt(self, step_id: str) -> RenderedPrompt:
        """``GET /v1/steps/{id}/prompt`` (NERVE-4092)."""
        return self.send(routes.get_prompt(step_id))

    def cancel_step(self, step_id: str) -> Step | CancelAccepted:
        """``POST /v1/steps/{id}/cancel`` (NERVE-4070)."""
        return self.send(routes.cancel_step(step_id))

    def stream_ticket(self, step_id: str) -> StreamTicket:
        """``POST /v1/steps/{id}/stream-ticket`` (NERVE-4054)."""
        return self.send(routes.stream_ticket(step_id))

    def append_fact(self, run_id: str, fact: dict[str, Any]) -> Fact:
        """``POST /v1/runs/{id}/facts``."""
        return self.send(routes.append_fact(run_id, fact))

    def facts(self, run_id: str, **filters: Any) -> list[Fact]:
        """``GET /v1/runs/{id}/facts`` with ``type``, ``step``, ``since_seq``, ``limit``."""
        return self.send(routes.facts(run_id, filters))

    def get_fact(self, fact_id: str) -> Fact:
        """``GET /v1/facts/{id}`` (NERVE-4074)."""
        return self.send(routes.get_fact(fact_id))

    def create_checkpoint(self, run_id: str, snapshot: Any, **fields: Any) -> Checkpoint:
        """``POST /v1/runs/{id}/checkpoint`` with ``snapshot`` and CheckpointCreate fields."""
        return self.send(routes.create_checkpoint(run_id, {"snapshot": snapshot,
                                                                 **fields}))

    def list_checkpoints(self, run_id: str, *, limit: int = 100,
                               after: str | None = None) -> Page[Checkpoint]:
        """``GET /v1/runs/{id}/checkpoints``: ``(checkpoints, next_after)``."""
        return self.send(routes.list_checkpoints(run_id, limit=limit, after=after))

    def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """``GET /v1/checkpoints/{id}`` (NERVE-4074)."""
        return self.send(routes.get_checkpoint(checkpoint_id))

    # -- streams -----------------------------------------------------------------------

    def stream(self, step_id: str, *, last_event_id: int | None = None) -> Iterator[Frame]:
        """The Step's typed frames until its terminal frame (NERVE-4111).

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
            StreamDisconnected: it ended before its terminal frame (NERVE-4072).
        """
        return self.frames(routes.stream(step_id, last_event_id=last_event_id))

    def stream_facts(self, run_id: str, *,
                     last_event_id: int | None = None) -> Iterator[Fact]:
        """A Run's Facts as they are appended, until the server ends the stream; a broken
        connection is ``StreamDisconnected`` of ``kind`` ``"run"``."""
        return self.frames(routes.stream_facts(run_id, last_event_id=last_event_id))

    def run_stream_ticket(self, run_id: str) -> RunStreamTicket:
        """``POST /v1/runs/{id}/stream-ticket`` (NERVE-4054)."""
        return self.send(run_routes.run_stream_ticket(run_id))

    def stream_run(self, run_id: str, *,
                   last_event_id: int | None = None) -> Iterator[RunEvent]:
        """The Run's stream until ``run_end`` (NERVE-4107, NERVE-4100)."""
        return self.frames(run_routes.stream_run(run_id, last_event_id=last_event_id))

    @contextlib.contextmanager
    def submit_stream(self, run_id: str, body: dict[str, Any], *,
                            last_event_id: int | None = None) -> \
            Iterator[SyncSubmittedStream]:
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
        with self.open(call) as resp:
            step_id = routes.submitted(resp)
            if step_id is None:
                step = msgspec.json.decode(resp.read(), type=Step)
                yield SyncSubmittedStream(step.step_id, resp.status_code == 201,
                                      self.stream(step.step_id, last_event_id=last_event_id))
                return
            reader = dataclasses.replace(call, subject=step_id).reader()
            yield SyncSubmittedStream(step_id, resp.status_code == 201, _frames(resp, reader))

    def run_step(self, run_id: str, body: dict[str, Any]) -> StepResult:
        """Submit a Step, read its stream to the end in the same request
        (:meth:`submit_stream`), then read the finished Step."""
        with self.submit_stream(run_id, body) as submitted:
            frames = list(submitted.frames())
        return StepResult(step=self.get_step(submitted.step_id), frames=frames)
