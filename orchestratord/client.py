"""An async Python client for orchestratord (httpx + httpx-sse), as an interpreter uses it.

Errors come back as the typed :class:`contracts.errors.OrchestratorError` subclasses, and
stream frames as :class:`Frame` whose ``data`` is the frame's payload Struct from
:mod:`contracts.events` (``TokenData``, ``EndData``, ``ErrorEnvelope``, ...).
The transport is injectable, like httpx's own (``transport=httpx.ASGITransport(app)``).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from contracts.checkpoints import Checkpoint
from contracts.errors import ErrorEnvelope, error_from_envelope
from contracts.events import (
    DURABLE_FRAMES,
    EffectEndData,
    EndData,
    FramePayload,
    FrameType,
    TokenData,
    ToolSuggestData,
    decode_frame_data,
)
from contracts.facts import Fact
from contracts.flows import Flow, FlowCreated
from contracts.pools import Capabilities, PoolInfo
from contracts.runs import Run
from contracts.steps import CancelAccepted, Step
from orchestratord.client_browse import BrowseMethods
from orchestratord.client_errors import (
    ERR_CONTEXT_BUDGET,
    ERR_INVALID_MODEL,
    ERR_SERVER,
    ERR_STREAM_DISCONNECTED,
    StreamDisconnected,
)
from orchestratord.client_llm import AsyncLlm
from orchestratord.client_runs import RunLifeMethods
from orchestratord.client_tokens import StepTokens

__all__ = ["ERR_CONTEXT_BUDGET", "ERR_INVALID_MODEL", "ERR_SERVER", "ERR_STREAM_DISCONNECTED",
           "Frame", "OrchestratorClient", "StepResult", "StreamDisconnected", "SubmittedStream",
           "UntypedData"]

_env_decoder = msgspec.json.Decoder(ErrorEnvelope)
_EPHEMERAL = frozenset(t.value for t in FrameType if t not in DURABLE_FRAMES)


class UntypedData(msgspec.Struct, frozen=True):
    """The data of a frame this client has no payload Struct for (an event name newer than
    the client, or a recorded payload that does not match its Struct): the decoded JSON."""

    value: Any


class Frame(msgspec.Struct, frozen=True):
    """One SSE frame as received (STREAM-2000).

    Attributes:
        id: the frame's sequence number in its Step (``id:``); None for ephemeral frames.
        event: the frame type (``event:``), a ``contracts.events.FrameType`` value.
        data: the payload Struct of that type (``contracts.events.FRAME_PAYLOADS``), or
            :class:`UntypedData` when there is none.
        raw: the ``data:`` line exactly as received (single-line JSON).
    """

    id: int | None
    event: str
    data: FramePayload | UntypedData
    raw: str

    @classmethod
    def decode(cls, seq: int | None, event: str, raw: str) -> Frame:
        """Build a frame from its SSE fields, decoding ``raw`` by ``event``.

        Raises:
            msgspec.DecodeError: ``raw`` is not JSON.
        """
        try:
            data: FramePayload | UntypedData = decode_frame_data(event, raw)
        except (KeyError, msgspec.ValidationError):
            data = UntypedData(msgspec.json.decode(raw))
        return cls(id=seq, event=event, data=data, raw=raw)

    @property
    def seq(self) -> int | None:
        """The sequence number (``id``); kept for callers written before :attr:`id`."""
        return self.id

    def json(self) -> Any:
        """The data as plain JSON values (dicts, lists, ...)."""
        return msgspec.json.decode(self.raw)


class StepResult(msgspec.Struct):
    """A Step and every frame of its stream, in order."""

    step: Step
    frames: list[Frame]

    @property
    def tokens(self) -> list[Frame]:
        """The ``token`` frames."""
        return [f for f in self.frames if f.event == "token"]

    @property
    def token_data(self) -> list[TokenData]:
        """The payloads of the ``token`` frames."""
        return [f.data for f in self.frames if isinstance(f.data, TokenData)]

    @property
    def terminal(self) -> Frame:
        """The ``end`` or ``error`` frame."""
        return self.frames[-1]

    @property
    def suggestions(self) -> list[Frame]:
        """The ``tool_suggest`` frames of an ``llm_plan`` (NERVE-4010)."""
        return [f for f in self.frames if f.event == "tool_suggest"]

    @property
    def suggestion_data(self) -> list[ToolSuggestData]:
        """The payloads of the ``tool_suggest`` frames."""
        return [f.data for f in self.frames if isinstance(f.data, ToolSuggestData)]

    @property
    def output(self) -> Any:
        """``end.output`` (``None`` when the Step ended with ``error``)."""
        data = self.terminal.data
        if isinstance(data, EndData | EffectEndData):
            return data.output
        return self.terminal.json()["output"] if self.terminal.event == "end" else None

    @property
    def text(self) -> str:
        """The generated text, concatenated from the token frames' ``t`` (valid text: a
        character split over several tokens is in the ``t`` of the token completing it)."""
        return "".join(tok.t for tok in self.token_data)

    @property
    def data(self) -> bytes:
        """The engine's exact output bytes: every token frame's ``b`` (base64) decoded and
        concatenated; a frame recorded before ``b`` existed gives the UTF-8 of its ``t``
        (STREAM-2006)."""
        out = bytearray()
        for tok in self.token_data:
            out += base64.b64decode(tok.b) if tok.b is not None else tok.t.encode()
        return bytes(out)

    @property
    def token_ids(self) -> list[int]:
        """The engine token id of each token frame."""
        return [tok.id for tok in self.token_data]


class SubmittedStream:
    """A Step submitted with ``Accept: text/event-stream``: its id, whether the request
    created it, and its frames as they arrive (STREAM-2010).

    Attributes:
        step_id: the Step's id (``X-Step-Id``).
        created: True for a 201 (a new Step), False for a 200 (the ``client_token``
            already named it).
    """

    def __init__(self, step_id: str, created: bool, frames: AsyncIterator[Frame]) -> None:
        self.step_id = step_id
        self.created = created
        self._frames = frames

    def frames(self) -> AsyncIterator[Frame]:
        """The Step's frames until its terminal frame (iterate once)."""
        return self._frames


async def _frames_of(source: Any, step_id: str) -> AsyncIterator[Frame]:
    """The frames of an open ``httpx_sse`` event source, until a terminal frame.

    Raises:
        StreamDisconnected: the stream ended, or its connection broke, before a terminal
            frame (NERVE-4072).
    """
    last: int | None = None
    try:
        async for sse in source.aiter_sse():
            if not sse.data and sse.event == "message":
                continue  # a ": keep-alive" comment after a frame that set an id
            # SSE carries the last id over to frames without one: ephemeral ones
            seq = int(sse.id) if sse.id and sse.event not in _EPHEMERAL else None
            last = seq if seq is not None else last
            yield Frame.decode(seq, sse.event, sse.data)
            if sse.event in ("end", "error"):
                return
    except httpx.TransportError as exc:
        raise StreamDisconnected(step_id, last, f"{type(exc).__name__}: {exc}") from exc
    raise StreamDisconnected(step_id, last, "the server closed the stream")


class OrchestratorClient(RunLifeMethods, BrowseMethods):
    """Talks to one orchestratord (the Run lifecycle methods are
    :class:`~orchestratord.client_runs.RunLifeMethods`, NERVE-4107; the browsing ones
    :class:`~orchestratord.client_browse.BrowseMethods`).

    Args:
        base_url: e.g. ``http://127.0.0.1:8787``.
        token: optional bearer token.
        transport: optional httpx transport (tests).
        timeout_s: per-request timeout; streams have no read timeout.
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url, transport=transport,
                                       headers=headers, timeout=timeout_s)
        self._tokens = StepTokens()

    def _with_token(self, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with a ``client_token``: its own, or one derived from the body and its
        occurrence in the Run (NERVE-4071), never a random one."""
        if "client_token" in body:
            return body
        return {"client_token": self._tokens.claim(run_id, body), **body}

    @property
    def llm(self) -> AsyncLlm:
        """The client contract's LLM lifecycle: capabilities, enqueue, stream, cancel."""
        return AsyncLlm(self)

    async def __aenter__(self) -> OrchestratorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        content = msgspec.json.encode(body) if body is not None else None
        resp = await self._http.request(
            method, path, content=content,
            headers={"content-type": "application/json"} if content is not None else None)
        if resp.status_code >= 400:
            try:
                env = _env_decoder.decode(resp.content)
            except msgspec.DecodeError:
                env = ErrorEnvelope(code="INTERNAL", message=resp.text,  # type: ignore[arg-type]
                                    retriable=False)
            raise error_from_envelope(env)
        return resp

    async def health(self) -> dict[str, Any]:
        """``GET /health``."""
        return (await self._call("GET", "/health")).json()  # type: ignore[no-any-return]

    async def ready(self) -> bool:
        """True when ``GET /ready`` answers 200."""
        return (await self._http.get("/ready")).status_code == 200

    async def capabilities(self) -> Capabilities:
        """``GET /v1/capabilities``."""
        return msgspec.json.decode((await self._call("GET", "/v1/capabilities")).content,
                                   type=Capabilities)

    async def pools(self) -> list[PoolInfo]:
        """``GET /v1/pools``."""
        return msgspec.json.decode((await self._call("GET", "/v1/pools")).content,
                                   type=list[PoolInfo])

    async def create_flow(self, ast_ir: Any, *, tools: list[dict[str, Any]] | None = None,
                          config: dict[str, Any] | None = None,
                          labels: dict[str, str] | None = None) -> FlowCreated:
        """``POST /v1/flows``."""
        body = {"ast_ir": ast_ir, "tools": tools or [], "config": config or {},
                "labels": labels or {}}
        return msgspec.json.decode((await self._call("POST", "/v1/flows", body)).content,
                                   type=FlowCreated)

    async def get_flow(self, flow_id: str) -> Flow:
        """``GET /v1/flows/{id}``."""
        return msgspec.json.decode((await self._call("GET", f"/v1/flows/{flow_id}")).content,
                                   type=Flow)

    async def create_run(self, flow_id: str, **fields: Any) -> Run:
        """``POST /v1/flows/{id}/runs`` with RunCreate fields (mode, seed, replay_of...)."""
        resp = await self._call("POST", f"/v1/flows/{flow_id}/runs", fields)
        return msgspec.json.decode(resp.content, type=Run)

    async def get_run(self, run_id: str) -> Run:
        """``GET /v1/runs/{id}``."""
        return msgspec.json.decode((await self._call("GET", f"/v1/runs/{run_id}")).content,
                                   type=Run)

    async def submit_step(self, run_id: str, body: dict[str, Any]) -> Step:
        """``POST /v1/runs/{id}/steps``; a missing ``client_token`` is derived from the body
        and its occurrence in the Run (NERVE-4071)."""
        body = self._with_token(run_id, body)
        resp = await self._call("POST", f"/v1/runs/{run_id}/steps", body)
        return msgspec.json.decode(resp.content, type=Step)

    async def get_step(self, step_id: str) -> Step:
        """``GET /v1/steps/{id}``."""
        return msgspec.json.decode((await self._call("GET", f"/v1/steps/{step_id}")).content,
                                   type=Step)

    async def cancel_step(self, step_id: str) -> Step | CancelAccepted:
        """``POST /v1/steps/{id}/cancel``: ``CancelAccepted`` (202) while the Step is live,
        the finished Step (200) otherwise (NERVE-4070)."""
        resp = await self._call("POST", f"/v1/steps/{step_id}/cancel")
        if resp.status_code == 202:
            return msgspec.json.decode(resp.content, type=CancelAccepted)
        return msgspec.json.decode(resp.content, type=Step)

    async def append_fact(self, run_id: str, fact: dict[str, Any]) -> Fact:
        """``POST /v1/runs/{id}/facts`` with ``{type, schema_uri, data, step_id?}``."""
        resp = await self._call("POST", f"/v1/runs/{run_id}/facts", fact)
        return msgspec.json.decode(resp.content, type=Fact)

    async def facts(self, run_id: str, **filters: Any) -> list[Fact]:
        """``GET /v1/runs/{id}/facts`` with ``type``, ``step``, ``since_seq``, ``limit``."""
        query = str(httpx.QueryParams(filters))
        resp = await self._call("GET", f"/v1/runs/{run_id}/facts" + (f"?{query}" if query
                                                                       else ""))
        return msgspec.json.decode(resp.content, type=list[Fact])

    async def _page(self, path: str, params: dict[str, Any]) -> tuple[httpx.Response, str | None]:
        """GET one page of a list; the ``after`` of its ``Link: rel="next"``, or None."""
        query = str(httpx.QueryParams({k: v for k, v in params.items() if v is not None}))
        resp = await self._call("GET", path + (f"?{query}" if query else ""))
        nxt = resp.links.get("next", {}).get("url")
        return resp, (httpx.URL(nxt).params.get("after") if nxt else None)

    async def list_flows(self, *, limit: int = 100,
                         after: str | None = None) -> tuple[list[Flow], str | None]:
        """``GET /v1/flows``: one page of the caller's Flows, oldest first (NERVE-4061).

        Returns:
            ``(flows, next_after)``: pass ``next_after`` as ``after`` for the next page;
            None on the last page.

        Raises:
            InvalidParams: ``limit`` outside 1..1000 or an unknown ``after``.
        """
        resp, nxt = await self._page("/v1/flows", {"limit": limit, "after": after})
        return msgspec.json.decode(resp.content, type=list[Flow]), nxt

    async def list_runs(self, flow_id: str, *, mode: str | None = None,
                        status: str | None = None, label: str | None = None,
                        limit: int = 100,
                        after: str | None = None) -> tuple[list[Run], str | None]:
        """``GET /v1/flows/{id}/runs``: one page of a Flow's Runs, oldest first, filtered
        by ``mode``, ``status`` and ``label`` (``key:value``) (NERVE-4061).

        Returns:
            ``(runs, next_after)``, as :meth:`list_flows`.

        Raises:
            NotFound: no such Flow (or another tenant's).
            InvalidParams: a bad filter, ``limit`` or ``after`` (``data.field``).
        """
        resp, nxt = await self._page(f"/v1/flows/{flow_id}/runs", {
            "mode": mode, "status": status, "label": label, "limit": limit, "after": after})
        return msgspec.json.decode(resp.content, type=list[Run]), nxt

    async def list_steps(self, run_id: str, *, limit: int = 100,
                         after: str | None = None) -> tuple[list[Step], str | None]:
        """``GET /v1/runs/{id}/steps``: one page of a Run's Steps in submission order
        (NERVE-4061), e.g. for an interpreter rebuilding its position after a crash.

        Returns:
            ``(steps, next_after)``, as :meth:`list_flows`.

        Raises:
            NotFound: no such Run (or another tenant's).
            InvalidParams: ``limit`` outside 1..1000 or an unknown ``after``.
        """
        resp, nxt = await self._page(f"/v1/runs/{run_id}/steps",
                                     {"limit": limit, "after": after})
        return msgspec.json.decode(resp.content, type=list[Step]), nxt

    async def stream(self, step_id: str, *, last_event_id: int | None = None) -> \
            AsyncIterator[Frame]:
        """Yield the Step's SSE frames until its terminal frame.

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
            StreamDisconnected: it ended before its terminal frame (NERVE-4072).
        """
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        async with aconnect_sse(self._http, "GET", f"/v1/steps/{step_id}/stream",
                                headers=headers, timeout=None) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise error_from_envelope(_env_decoder.decode(source.response.content))
            async for frame in _frames_of(source, step_id):
                yield frame

    @contextlib.asynccontextmanager
    async def submit_stream(self, run_id: str, body: dict[str, Any], *,
                            last_event_id: int | None = None) -> \
            AsyncIterator[SubmittedStream]:
        """Submit a Step and read its stream in the same request: ``POST
        /v1/runs/{id}/steps`` with ``Accept: text/event-stream`` (one round trip,
        STREAM-2010). A missing ``client_token`` is derived (NERVE-4071), and each equal
        body counts as a new occurrence, so a new Step: to resume after
        :class:`StreamDisconnected`, read :meth:`stream` of its ``step_id`` from its
        ``last_event_id``, or resubmit the body with the Step's own ``client_token`` and
        ``last_event_id``.

        A server that answers the submission with JSON (one older than the stream
        answer) is read as before: the Step from the body, then its ``GET`` stream.

        Raises:
            OrchestratorError: the submission was refused (its typed subclass).
        """
        body = self._with_token(run_id, body)
        headers = {"content-type": "application/json"}  # aconnect_sse adds the Accept
        if last_event_id is not None:
            headers["last-event-id"] = str(last_event_id)
        async with aconnect_sse(self._http, "POST", f"/v1/runs/{run_id}/steps",
                                content=msgspec.json.encode(body), headers=headers,
                                timeout=None) as source:
            resp = source.response
            if resp.status_code >= 400:
                await resp.aread()
                raise error_from_envelope(_env_decoder.decode(resp.content))
            if resp.headers.get("content-type", "").startswith("application/json"):
                await resp.aread()
                step = msgspec.json.decode(resp.content, type=Step)
                yield SubmittedStream(step.step_id, resp.status_code == 201,
                                      self.stream(step.step_id, last_event_id=last_event_id))
                return
            step_id = resp.headers["x-step-id"]
            yield SubmittedStream(step_id, resp.status_code == 201, _frames_of(source, step_id))

    async def run_step(self, run_id: str, body: dict[str, Any]) -> StepResult:
        """Submit a Step, read its stream to the end in the same request
        (:meth:`submit_stream`), then read the finished Step."""
        async with self.submit_stream(run_id, body) as submitted:
            frames = [f async for f in submitted.frames()]
        return StepResult(step=await self.get_step(submitted.step_id), frames=frames)

    async def get_checkpoint(self, checkpoint_id: str) -> Checkpoint:
        """``GET /v1/checkpoints/{id}`` (NERVE-4074). Raises NotFound."""
        resp = await self._call("GET", f"/v1/checkpoints/{checkpoint_id}")
        return msgspec.json.decode(resp.content, type=Checkpoint)

    async def get_fact(self, fact_id: str) -> Fact:
        """``GET /v1/facts/{id}`` (NERVE-4074). Raises NotFound."""
        resp = await self._call("GET", f"/v1/facts/{fact_id}")
        return msgspec.json.decode(resp.content, type=Fact)
