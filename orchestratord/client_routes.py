"""One :class:`~orchestratord.client_calls.Call` per route of the native API (NERVE-4110).

Each function here describes a request and how its answer decodes into its
``contracts/`` Struct; it sends nothing. Both clients' public methods are one line that
sends what one of these returns, so the two can never disagree on a path, a query or a
type. Errors are raised by the shells as :func:`~orchestratord.client_calls.error_of`
decodes them: the typed :class:`~contracts.errors.OrchestratorError` subclass of the
code, e.g. ``NotFound`` for an unknown id or another tenant's (NERVE-4051).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from contracts.checkpoints import Checkpoint
from contracts.facts import Fact
from contracts.flows import Flow, FlowCreated
from contracts.pools import Capabilities, PoolInfo
from contracts.runs import Run
from contracts.steps import CancelAccepted, RenderedPrompt, Step
from contracts.tickets import StreamTicket
from orchestratord.client_calls import Call, StreamCall
from orchestratord.client_frames import Frame

__all__ = [
    "Page",
    "append_fact",
    "cancel_run",
    "cancel_step",
    "capabilities",
    "create_checkpoint",
    "create_flow",
    "create_run",
    "facts",
    "get_checkpoint",
    "get_fact",
    "get_flow",
    "get_flow_by_hash",
    "get_pool",
    "get_prompt",
    "get_run",
    "get_step",
    "health",
    "list_checkpoints",
    "list_flow_facts",
    "list_flows",
    "list_runs",
    "list_steps",
    "metrics",
    "page_of",
    "pools",
    "ready",
    "stream",
    "stream_facts",
    "stream_ticket",
    "submit_step",
    "submit_stream",
    "submitted",
]

T = TypeVar("T")
Page = tuple[list[T], str | None]
"""One page of a list and the ``after`` of the next page (None on the last page)."""


def _q(segment: str) -> str:
    return quote(segment, safe=":")


def _as(kind: type[T]) -> Callable[[httpx.Response], T]:
    decoder = msgspec.json.Decoder(kind)
    return lambda resp: decoder.decode(resp.content)


def page_of(kind: type[T]) -> Callable[[httpx.Response], Page[T]]:
    """The parser of one page of a list of ``kind`` and its ``Link: rel="next"`` cursor."""
    decoder = msgspec.json.Decoder(list[kind])  # type: ignore[valid-type]

    def parse(resp: httpx.Response) -> Page[T]:
        nxt = resp.links.get("next", {}).get("url")
        return decoder.decode(resp.content), (httpx.URL(nxt).params.get("after") if nxt
                                              else None)
    return parse


def _json(resp: httpx.Response) -> Any:
    return msgspec.json.decode(resp.content)


def health() -> Call[dict[str, Any]]:
    """``GET /health``: ``{"status": "ok", "server_version"}``."""
    return Call("GET", "/health", _json)


def ready() -> Call[bool]:
    """``GET /ready``: True when every pool has a ready replica (200), False on 503."""
    return Call("GET", "/ready", lambda resp: resp.status_code == 200, errors=False)


def metrics() -> Call[str]:
    """``GET /metrics``: the Prometheus exposition text."""
    return Call("GET", "/metrics", lambda resp: resp.text)


def capabilities() -> Call[Capabilities]:
    """``GET /v1/capabilities``: models, limits, Step and frame types (NERVE-4076)."""
    return Call("GET", "/v1/capabilities", _as(Capabilities))


def pools() -> Call[list[PoolInfo]]:
    """``GET /v1/pools``."""
    return Call("GET", "/v1/pools", _as(list[PoolInfo]))


def get_pool(pool_id: str) -> Call[PoolInfo]:
    """``GET /v1/pools/{id}``; ``NotFound`` for an unknown pool."""
    return Call("GET", f"/v1/pools/{_q(pool_id)}", _as(PoolInfo))


def create_flow(ast_ir: Any, *, tools: list[dict[str, Any]] | None = None,
                config: dict[str, Any] | None = None,
                labels: dict[str, str] | None = None) -> Call[FlowCreated]:
    """``POST /v1/flows``: content-addressed, so sending it twice is harmless
    (``created`` False the second time)."""
    body = {"ast_ir": ast_ir, "tools": tools or [], "config": config or {},
            "labels": labels or {}}
    return Call("POST", "/v1/flows", _as(FlowCreated), body=body)


def get_flow(flow_id: str) -> Call[Flow]:
    """``GET /v1/flows/{id}``."""
    return Call("GET", f"/v1/flows/{_q(flow_id)}", _as(Flow))


def get_flow_by_hash(flow_hash: str) -> Call[Flow]:
    """``GET /v1/flows:by-hash/{hash}`` with a ``b3:`` content hash."""
    return Call("GET", f"/v1/flows:by-hash/{_q(flow_hash)}", _as(Flow))


def list_flows(*, limit: int = 100, after: str | None = None) -> Call[Page[Flow]]:
    """``GET /v1/flows``: one page of the caller's Flows, oldest first (NERVE-4061);
    ``InvalidParams`` for ``limit`` outside 1..1000 or an unknown ``after``."""
    return Call("GET", "/v1/flows", page_of(Flow), params={"limit": limit, "after": after})


def list_runs(flow_id: str, *, mode: str | None = None, status: str | None = None,
              label: str | None = None, limit: int = 100,
              after: str | None = None) -> Call[Page[Run]]:
    """``GET /v1/flows/{id}/runs``: one page of a Flow's Runs, oldest first, filtered by
    ``mode``, ``status`` and ``label`` (``key:value``) (NERVE-4061)."""
    return Call("GET", f"/v1/flows/{_q(flow_id)}/runs", page_of(Run), params={
        "mode": mode, "status": status, "label": label, "limit": limit, "after": after})


def list_flow_facts(flow_id: str, *, type: str | None = None, limit: int = 1000,
                    after: str | None = None) -> Call[Page[Fact]]:
    """``GET /v1/flows/{id}/facts``: one page of the Facts of every Run of a Flow, in
    append order (NERVE-4075)."""
    return Call("GET", f"/v1/flows/{_q(flow_id)}/facts", page_of(Fact),
                params={"type": type, "limit": limit, "after": after})


def create_run(flow_id: str, fields: dict[str, Any]) -> Call[Run]:
    """``POST /v1/flows/{id}/runs`` with RunCreate fields (mode, seed, replay_of, ...).
    Each one creates a new Run: never retried (NERVE-4112)."""
    return Call("POST", f"/v1/flows/{_q(flow_id)}/runs", _as(Run), body=fields,
                idempotent=False)


def get_run(run_id: str) -> Call[Run]:
    """``GET /v1/runs/{id}``."""
    return Call("GET", f"/v1/runs/{_q(run_id)}", _as(Run))


def cancel_run(run_id: str) -> Call[Run]:
    """``POST /v1/runs/{id}/cancel``: idempotent; the cancelled Run."""
    return Call("POST", f"/v1/runs/{_q(run_id)}/cancel", _as(Run))


def list_steps(run_id: str, *, limit: int = 100, after: str | None = None) -> Call[Page[Step]]:
    """``GET /v1/runs/{id}/steps``: one page of a Run's Steps in submission order
    (NERVE-4061)."""
    return Call("GET", f"/v1/runs/{_q(run_id)}/steps", page_of(Step),
                params={"limit": limit, "after": after})


def submit_step(run_id: str, body: dict[str, Any]) -> Call[Step]:
    """``POST /v1/runs/{id}/steps`` of a body that already carries its ``client_token``
    (:func:`~orchestratord.client_calls.with_token`): idempotent, 201 new or 200 the
    Step the token names (NERVE-4003)."""
    return Call("POST", f"/v1/runs/{_q(run_id)}/steps", _as(Step), body=body,
                idempotent="client_token" in body)


def submit_stream(run_id: str, body: dict[str, Any], *,
                  last_event_id: int | None = None) -> StreamCall[Frame]:
    """``POST /v1/runs/{id}/steps`` with ``Accept: text/event-stream``: the Step's stream
    in the same answer (STREAM-2010); read its Step id with :func:`submitted`."""
    return StreamCall("POST", f"/v1/runs/{_q(run_id)}/steps", subject="",
                      decode=Frame.decode, body=body, last_event_id=last_event_id,
                      idempotent="client_token" in body)


def submitted(resp: httpx.Response) -> str | None:
    """The Step id of a :func:`submit_stream` answer (``X-Step-Id``), or None when the
    server answered with the Step as JSON (a server older than STREAM-2010): read the
    body as a Step and its stream with :func:`stream`."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return None
    return resp.headers["x-step-id"]


def get_prompt(step_id: str) -> Call[RenderedPrompt]:
    """``GET /v1/steps/{id}/prompt``: the exact text an LLM Step's engine was sent, with
    its hash (NERVE-4092); ``NotFound`` for another type or an unrecorded text."""
    return Call("GET", f"/v1/steps/{_q(step_id)}/prompt", _as(RenderedPrompt))


def get_step(step_id: str) -> Call[Step]:
    """``GET /v1/steps/{id}``."""
    return Call("GET", f"/v1/steps/{_q(step_id)}", _as(Step))


_cancel_accepted = msgspec.json.Decoder(CancelAccepted)
_step = msgspec.json.Decoder(Step)


def cancel_step(step_id: str) -> Call[Step | CancelAccepted]:
    """``POST /v1/steps/{id}/cancel``: ``CancelAccepted`` (202) while the Step is live,
    the finished Step (200) otherwise (NERVE-4070). Idempotent."""
    def parse(resp: httpx.Response) -> Step | CancelAccepted:
        if resp.status_code == 202:
            return _cancel_accepted.decode(resp.content)
        return _step.decode(resp.content)
    return Call("POST", f"/v1/steps/{_q(step_id)}/cancel", parse)


def stream_ticket(step_id: str) -> Call[StreamTicket]:
    """``POST /v1/steps/{id}/stream-ticket``: a 60 s ticket that opens the Step's stream
    without the bearer token, for a browser's ``EventSource`` (NERVE-4054)."""
    return Call("POST", f"/v1/steps/{_q(step_id)}/stream-ticket", _as(StreamTicket),
                idempotent=False)


def stream(step_id: str, *, last_event_id: int | None = None) -> StreamCall[Frame]:
    """``GET /v1/steps/{id}/stream``, resuming after ``last_event_id``; a 204 answer
    (read from at or after the terminal frame, STREAM-2012) has no frames."""
    return StreamCall("GET", f"/v1/steps/{_q(step_id)}/stream", subject=step_id,
                      decode=Frame.decode, last_event_id=last_event_id)


def append_fact(run_id: str, fact: dict[str, Any]) -> Call[Fact]:
    """``POST /v1/runs/{id}/facts`` with ``{type, schema_uri, data, step_id?}``: appends a
    new Fact each time, so it is never retried (NERVE-4112)."""
    return Call("POST", f"/v1/runs/{_q(run_id)}/facts", _as(Fact), body=fact,
                idempotent=False)


def facts(run_id: str, filters: dict[str, Any]) -> Call[list[Fact]]:
    """``GET /v1/runs/{id}/facts`` with ``type``, ``step``, ``since_seq``, ``limit``."""
    return Call("GET", f"/v1/runs/{_q(run_id)}/facts", _as(list[Fact]), params=filters)


def stream_facts(run_id: str, *, last_event_id: int | None = None) -> StreamCall[Fact]:
    """``GET /v1/runs/{id}/facts/stream``: a Run's Facts as ``fact`` frames (``id:`` the
    Fact's seq), resuming after ``last_event_id``; it has no terminal frame."""
    return StreamCall("GET", f"/v1/runs/{_q(run_id)}/facts/stream", subject=run_id,
                      decode=_fact_event, kind="run", terminals=frozenset(),
                      last_event_id=last_event_id)


_fact = msgspec.json.Decoder(Fact)


def _fact_event(_seq: int | None, event: str, data: str) -> Fact | None:
    return _fact.decode(data) if event == "fact" else None


def get_fact(fact_id: str) -> Call[Fact]:
    """``GET /v1/facts/{id}`` (NERVE-4074)."""
    return Call("GET", f"/v1/facts/{_q(fact_id)}", _as(Fact))


def create_checkpoint(run_id: str, body: dict[str, Any]) -> Call[Checkpoint]:
    """``POST /v1/runs/{id}/checkpoint`` with ``{snapshot, ...}``: 201 new, 200 when an
    identical one exists, so it is idempotent."""
    return Call("POST", f"/v1/runs/{_q(run_id)}/checkpoint", _as(Checkpoint), body=body)


def list_checkpoints(run_id: str, *, limit: int = 100,
                     after: str | None = None) -> Call[Page[Checkpoint]]:
    """``GET /v1/runs/{id}/checkpoints``: one page of a Run's checkpoints, oldest first."""
    return Call("GET", f"/v1/runs/{_q(run_id)}/checkpoints", page_of(Checkpoint),
                params={"limit": limit, "after": after})


def get_checkpoint(checkpoint_id: str) -> Call[Checkpoint]:
    """``GET /v1/checkpoints/{id}`` (NERVE-4074)."""
    return Call("GET", f"/v1/checkpoints/{_q(checkpoint_id)}", _as(Checkpoint))
