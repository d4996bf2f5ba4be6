"""An async Python client for orchestratord (httpx + httpx-sse), as an interpreter uses it.

Errors come back as the typed :class:`contracts.errors.OrchestratorError` subclasses.
The transport is injectable, like httpx's own (``transport=httpx.ASGITransport(app)``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from contracts.errors import ErrorEnvelope, error_from_envelope
from contracts.facts import Fact
from contracts.flows import Flow, FlowCreated
from contracts.pools import Capabilities, PoolInfo
from contracts.runs import Run
from contracts.steps import Step

__all__ = ["Frame", "OrchestratorClient", "StepResult"]

_env_decoder = msgspec.json.Decoder(ErrorEnvelope)


class Frame(msgspec.Struct, frozen=True):
    """One SSE frame as received: ``seq`` (None for ephemeral frames), event, raw data."""

    seq: int | None
    event: str
    data: str

    def json(self) -> Any:
        """The decoded data."""
        return msgspec.json.decode(self.data)


class StepResult(msgspec.Struct):
    """A Step and every frame of its stream, in order."""

    step: Step
    frames: list[Frame]

    @property
    def tokens(self) -> list[Frame]:
        """The ``token`` frames."""
        return [f for f in self.frames if f.event == "token"]

    @property
    def terminal(self) -> Frame:
        """The ``end`` or ``error`` frame."""
        return self.frames[-1]

    @property
    def suggestions(self) -> list[Frame]:
        """The ``tool_suggest`` frames of an ``llm_plan`` (NERVE-4010)."""
        return [f for f in self.frames if f.event == "tool_suggest"]

    @property
    def output(self) -> Any:
        """``end.output`` (``None`` when the Step ended with ``error``)."""
        return self.terminal.json()["output"] if self.terminal.event == "end" else None

    @property
    def text(self) -> str:
        """The generated text, concatenated from the token frames' ``t`` (valid text: a
        character split over several tokens is in the ``t`` of the token completing it)."""
        return "".join(f.json()["t"] for f in self.tokens)

    @property
    def data(self) -> bytes:
        """The engine's exact output bytes: every token frame's ``b`` (base64) decoded and
        concatenated; a frame recorded before ``b`` existed gives the UTF-8 of its ``t``
        (STREAM-2006)."""
        out = bytearray()
        for frame in self.tokens:
            tok = frame.json()
            out += base64.b64decode(tok["b"]) if tok.get("b") is not None else \
                tok["t"].encode()
        return bytes(out)

    @property
    def token_ids(self) -> list[int]:
        """The engine token id of each token frame."""
        return [f.json()["id"] for f in self.tokens]


class OrchestratorClient:
    """Talks to one orchestratord.

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
        """``POST /v1/runs/{id}/steps``; a ``client_token`` is generated when missing."""
        body = {"client_token": str(uuid.uuid4()), **body}
        resp = await self._call("POST", f"/v1/runs/{run_id}/steps", body)
        return msgspec.json.decode(resp.content, type=Step)

    async def get_step(self, step_id: str) -> Step:
        """``GET /v1/steps/{id}``."""
        return msgspec.json.decode((await self._call("GET", f"/v1/steps/{step_id}")).content,
                                   type=Step)

    async def cancel_step(self, step_id: str) -> Step:
        """``POST /v1/steps/{id}/cancel``."""
        resp = await self._call("POST", f"/v1/steps/{step_id}/cancel")
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

    async def stream(self, step_id: str, *, last_event_id: int | None = None) -> \
            AsyncIterator[Frame]:
        """Yield the Step's SSE frames until its terminal frame."""
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        async with aconnect_sse(self._http, "GET", f"/v1/steps/{step_id}/stream",
                                headers=headers, timeout=None) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise error_from_envelope(_env_decoder.decode(source.response.content))
            async for sse in source.aiter_sse():
                yield Frame(seq=int(sse.id) if sse.id else None, event=sse.event,
                            data=sse.data)
                if sse.event in ("end", "error"):
                    return

    async def run_step(self, run_id: str, body: dict[str, Any]) -> StepResult:
        """Submit a Step and read its stream to the end."""
        step = await self.submit_step(run_id, body)
        frames = [f async for f in self.stream(step.step_id)]
        return StepResult(step=await self.get_step(step.step_id), frames=frames)
