"""The Litestar application: routes, the one error handler, correlation ids, SSE.

Every route answers errors with the flat envelope ``{code, message, retriable,
retry_after_ms?, data?}`` and carries ``X-Correlation-Id`` (echoed or a new UUIDv4),
SSE responses included. The domain lives in :mod:`orchestrator_core`; this module only
translates HTTP to calls on :class:`~orchestrator_core.service.Orchestrator`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import Stream
from litestar.types import Message, Scope
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.checkpoints import Checkpoint, CheckpointCreate
from contracts.errors import (
    InvalidParams,
    PoolUnready,
    Unauthorized,
)
from contracts.facts import Fact, FactCreate
from contracts.flows import Flow, FlowCreate, FlowCreated
from contracts.pools import Capabilities, PoolInfo
from contracts.runs import Run, RunCreate
from contracts.steps import CancelAccepted, Step, StepSubmit
from contracts.tickets import StreamTicket
from orchestrator_core.clock import Clock
from orchestrator_core.config import ServerConfig
from orchestrator_core.metrics import Metrics
from orchestrator_core.service import SERVER_VERSION, Orchestrator
from orchestratord.auth import require_token, tenant_of
from orchestratord.browse_routes import BROWSE_ROUTES
from orchestratord.cors import CorsMiddleware
from orchestratord.docs_ui import docs_assets_router, swagger_plugin
from orchestratord.edge import EdgeGuard, JsonRequest
from orchestratord.failures import as_orchestrator_error
from orchestratord.http_metrics import HttpMetrics
from orchestratord.llm_routes import LLM_ROUTES
from orchestratord.nav_routes import NAV_ROUTES
from orchestratord.openai_facade import openai_router
from orchestratord.openapi_spec import SECURITY, SECURITY_COMPONENTS, complete_document
from orchestratord.pool_routes import POOL_ROUTES
from orchestratord.prompt_routes import PROMPT_ROUTES
from orchestratord.recording_routes import RECORDING_ROUTES
from orchestratord.run_routes import RUN_ROUTES
from orchestratord.sse import SSE_HEADERS, SseStream, accepts_event_stream
from orchestratord.telemetry import observability_plugins
from orchestratord.tickets import MAX_TICKET_CHARS, TICKET_TTL_MS, StreamTickets
from worker_adapters.base import Drivers, ToolsFactory
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

__all__ = ["create_app"]

log = logging.getLogger("orchestratord")
_enc = msgspec.json.Encoder()
_CORRELATION_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
"""What a caller's ``X-Correlation-Id`` may hold (1..128 of these), checked without a
regular expression: nothing from a request runs on Python ``re``."""


def _valid_correlation_id(text: str) -> bool:
    return 0 < len(text) <= 128 and _CORRELATION_CHARS.issuperset(text)


Orch = NamedDependency[Orchestrator]
"""The orchestrator, injected by name into every route."""
Tenant = NamedDependency[str]
"""The caller's tenant, resolved by the auth guard."""


# -- the one error handler -------------------------------------------------------------


def error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Turn any exception into the flat error envelope with its HTTP status.

    ``Retry-After`` (whole seconds, rounded up) and ``X-Backoff-Ms`` are added when the
    error carries ``retry_after_ms``.
    """
    err = as_orchestrator_error(exc)
    headers: dict[str, str] = {}
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="orchestratord"'
    if err.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, -(-err.retry_after_ms // 1000)))
        headers["X-Backoff-Ms"] = str(err.retry_after_ms)
    return Response(content=_enc.encode(err.envelope()), status_code=err.http_status,
                    media_type="application/json", headers=headers)


# -- correlation ids -------------------------------------------------------------------


async def add_correlation_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: echo a valid ``X-Correlation-Id`` or add a new UUIDv4.

    It runs for every HTTP response, router-level 404/405 and SSE streams included. It is
    ``async`` on purpose: Litestar runs a plain function in a worker thread, and this hook
    runs for every ASGI message, i.e. every SSE chunk.
    """
    if message["type"] != "http.response.start":
        return
    cid = None
    for name, value in scope["headers"]:
        if name == b"x-correlation-id":
            text = value.decode("latin-1")
            cid = text if _valid_correlation_id(text) else None
            break
    message["headers"] = [*message.get("headers", []),
                          (b"x-correlation-id", (cid or str(uuid.uuid4())).encode())]


# -- routes ----------------------------------------------------------------------------


def _orch(state: State) -> Orchestrator:
    orch: Orchestrator = state.orch
    return orch


def _json(value: Any, status: int = 200) -> Response[bytes]:
    return Response(content=_enc.encode(value), status_code=status,
                    media_type="application/json")


_BUDGET_HEADERS = {"tokens_in": "X-Budget-Tokens-In-Remaining",
                   "tokens_out": "X-Budget-Tokens-Out-Remaining",
                   "cost_usd": "X-Budget-Cost-Usd-Remaining",
                   "wall_ms": "X-Budget-Wall-Ms-Remaining"}


def budget_headers(orch: Orchestrator, run_id: str) -> dict[str, str]:
    """``X-Budget-*-Remaining`` headers of a Run, for the budgets it has (POLICY-3000):
    tokens and milliseconds as integers, USD with 6 decimals."""
    return {_BUDGET_HEADERS[k]: (f"{v:.6f}" if k == "cost_usd" else str(int(v)))
            for k, v in orch.budget_remaining(run_id).items()}


@post("/v1/flows", status_code=201)
async def create_flow(data: JSONBody[FlowCreate], orch: Orch,
                      tenant: Tenant) -> Response[FlowCreated]:
    """Create a content-addressed Flow: 201 when new, 200 when it already existed."""
    flow, created = orch.create_flow(data, tenant)
    return Response(FlowCreated(flow_id=flow.flow_id, hash=flow.hash, created=created),
                    status_code=201 if created else 200)


@get("/v1/flows/{flow_id:str}")
async def get_flow(flow_id: FromPath[str], orch: Orch, tenant: Tenant) -> Flow:
    """Read a Flow."""
    return orch.get_flow(flow_id, tenant)


@get("/v1/flows:by-hash/{flow_hash:str}")
async def get_flow_by_hash(flow_hash: FromPath[str], orch: Orch, tenant: Tenant) -> Flow:
    """Read a Flow by its ``b3:`` content hash."""
    return orch.get_flow_by_hash(flow_hash, tenant)


@post("/v1/flows/{flow_id:str}/runs", status_code=201)
async def create_run(flow_id: FromPath[str], data: JSONBody[RunCreate], orch: Orch,
                     tenant: Tenant) -> Run:
    """Start a Run of a Flow in ``record``, ``replay`` or ``strict_replay`` mode."""
    return orch.create_run(flow_id, data, tenant)


@get("/v1/runs/{run_id:str}")
async def get_run(run_id: FromPath[str], orch: Orch, tenant: Tenant) -> Response[Run]:
    """Read a Run with its usage and Step counts; ``X-Budget-*`` headers say what is left."""
    return Response(orch.get_run(run_id, tenant), headers=budget_headers(orch, run_id))


@post("/v1/runs/{run_id:str}/cancel", status_code=200)
async def cancel_run(run_id: FromPath[str], orch: Orch, tenant: Tenant) -> Run:
    """Cancel a Run: in-flight Steps are cancelled and new ones refused. Idempotent."""
    return orch.cancel_run(run_id, tenant)


@post("/v1/runs/{run_id:str}/steps", status_code=201)
async def submit_step(run_id: FromPath[str], data: JSONBody[StepSubmit],
                      request: Request[Any, Any, Any], orch: Orch,
                      tenant: Tenant) -> Response[Any]:
    """Submit a Step: 201 when new, 200 when the client_token already names it.

    With ``Accept: text/event-stream`` the answer is the Step's SSE stream itself, with
    the same status, ``X-Step-Id`` and ``Location`` (STREAM-2010); ``Last-Event-ID``
    then resumes it, and is checked before anything is admitted.
    """
    streamed = accepts_event_stream(request.scope["headers"])
    last = _last_event_id(request) if streamed else None
    step, created = await orch.submit_step(run_id, data, tenant)
    status = 201 if created else 200
    headers = budget_headers(orch, run_id)
    if streamed:
        headers["X-Step-Id"] = step.step_id
        headers["Location"] = f"/v1/steps/{quote(step.step_id)}"
        return SseStream(orch.stream_of(step.step_id, last), status_code=status,
                         headers=headers)
    return Response(step, status_code=status, headers=headers)


@get("/v1/steps/{step_id:str}")
async def get_step(step_id: FromPath[str], orch: Orch, tenant: Tenant) -> Response[Step]:
    """Read a Step, with its Run's ``X-Budget-*`` headers."""
    step = orch.get_step(step_id, tenant)
    return Response(step, headers=budget_headers(orch, step.run_id))


@post("/v1/steps/{step_id:str}/cancel", status_code=202)
async def cancel_step(step_id: FromPath[str], orch: Orch, tenant: Tenant) -> Response[Any]:
    """Cancel a Step. Idempotent: 202 ``{status: "cancelling"}`` while it is live, 200
    with the Step unchanged once it has finished (NERVE-4070)."""
    live = not orch.get_step(step_id, tenant).status.terminal
    step = orch.cancel_step(step_id, tenant)
    if live:
        return Response(CancelAccepted(), status_code=202)
    return Response(step, status_code=200)


def _last_event_id(request: Request[Any, Any, Any]) -> int | None:
    # Read from the raw ASGI headers (lower-case names): ``request.headers`` would build
    # and keep a parsed copy (~1 KiB) for as long as the stream lasts (STREAM-2004).
    raw = next((value.decode("latin-1") for name, value in request.scope["headers"]
                if name == b"last-event-id"), None)
    if raw is None:
        return None
    try:
        last = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 20 else -1
        if not 0 <= last < 2**63:
            raise ValueError(raw)
    except ValueError:
        raise InvalidParams("Last-Event-ID must be a sequence number (an integer in "
                            "[0, 2**63))", data={"last_event_id": raw[:64]}) from None
    return last


@post("/v1/steps/{step_id:str}/stream-ticket", status_code=200)
async def stream_ticket(step_id: FromPath[str], request: Request[Any, Any, Any], orch: Orch,
                        tenant: Tenant) -> StreamTicket:
    """A 60 s ticket that opens this Step's stream without a bearer token (NERVE-4054)."""
    orch.get_step(step_id, tenant)
    tickets: StreamTickets = request.app.state.stream_tickets
    return StreamTicket(ticket=tickets.issue(step_id, tenant, orch.clock.monotonic()),
                        step_id=step_id, expires_in_ms=TICKET_TTL_MS)


@get("/v1/steps/{step_id:str}/stream", media_type="text/event-stream", opt={"ticket": True})
async def stream_step(step_id: FromPath[str], request: Request[Any, Any, Any],
                      orch: Orch, tenant: Tenant,
                      ticket: Annotated[str | None, Parameter(
                          max_length=MAX_TICKET_CHARS,
                          description="A ticket from `POST /v1/steps/{step_id}/stream-ticket`"
                                      " for this Step, instead of the bearer token "
                                      "(NERVE-4054).")] = None) -> Stream | Response[None]:
    """SSE stream of a Step's frames; ``Last-Event-ID`` resumes after that frame.

    A ``Last-Event-ID`` at or after the terminal frame answers 204 No Content, which
    makes a browser's ``EventSource`` stop reconnecting (STREAM-2012). ``ticket`` (from
    ``POST /v1/steps/{step_id}/stream-ticket``) stands in for the bearer token
    (NERVE-4054); the auth guard checks it.
    """
    stream = orch.open_stream(step_id, _last_event_id(request), tenant=tenant)
    if stream.ended_before():
        return Response(None, status_code=204, headers=SSE_HEADERS)
    return SseStream(stream)


@post("/v1/runs/{run_id:str}/facts", status_code=201)
async def append_fact(run_id: FromPath[str], data: JSONBody[FactCreate], orch: Orch,
                      tenant: Tenant) -> Fact:
    """Append a typed, schema-validated Fact to a Run (append-only)."""
    return orch.facts.append(run_id, data, tenant)


@get("/v1/runs/{run_id:str}/facts")
async def list_run_facts(run_id: FromPath[str], orch: Orch, tenant: Tenant,
                         type: FromQuery[str | None] = None,
                         step: FromQuery[str | None] = None,
                         since_seq: FromQuery[int] = -1,
                         limit: FromQuery[int] = 1000) -> list[Fact]:
    """A Run's Facts in order, filtered by type, emitting step, ``seq > since_seq``."""
    if not 1 <= limit <= 10_000 or not -1 <= since_seq < 2**62:
        raise InvalidParams("limit must be 1..10000 and since_seq in [-1, 2**62)",
                            data={"limit": limit, "since_seq": since_seq})
    return orch.facts.list_run(run_id, tenant, fact_type=type, step_id=step,
                               since_seq=since_seq, limit=limit)


@get("/v1/runs/{run_id:str}/facts/stream", media_type="text/event-stream")
async def stream_run_facts(run_id: FromPath[str], request: Request[Any, Any, Any],
                           orch: Orch, tenant: Tenant) -> Stream:
    """SSE stream of a Run's Facts; ``Last-Event-ID`` (a fact seq) resumes after it."""
    body = orch.facts.open_stream(run_id, tenant, _last_event_id(request))
    return Stream(body, media_type="text/event-stream", headers=SSE_HEADERS)


@get("/v1/flows/{flow_id:str}/facts")
async def list_flow_facts(flow_id: FromPath[str], orch: Orch, tenant: Tenant,
                          type: FromQuery[str | None] = None,
                          limit: FromQuery[int] = 1000,
                          after: FromQuery[str | None] = None) -> Response[list[Fact]]:
    """A page of the Facts of every Run of a Flow, in append order: ``limit`` (1..10000,
    default 1000) after the fact_id ``after``; ``Link: <...>; rel="next"`` names the next
    page (NERVE-4075)."""
    page, next_after = orch.facts.list_flow(flow_id, tenant, fact_type=type, after=after,
                                            limit=limit)
    headers = {}
    if next_after is not None:
        query = urlencode({k: v for k, v in (("type", type), ("limit", limit),
                                             ("after", next_after)) if v is not None})
        headers["Link"] = f'</v1/flows/{quote(flow_id)}/facts?{query}>; rel="next"'
    return Response(page, headers=headers)


@post("/v1/runs/{run_id:str}/checkpoint", status_code=201)
async def create_checkpoint(run_id: FromPath[str], data: JSONBody[CheckpointCreate], orch: Orch,
                            tenant: Tenant) -> Response[Checkpoint]:
    """Snapshot interpreter state with the server's cursor: 201 new, 200 when identical."""
    ckp, created = orch.checkpoints.create(run_id, data, tenant)
    return Response(ckp, status_code=201 if created else 200)


@get("/v1/runs/{run_id:str}/checkpoints")
async def list_checkpoints(run_id: FromPath[str], orch: Orch, tenant: Tenant,
                           limit: FromQuery[int] = 100,
                           after: FromQuery[str | None] = None) -> Response[list[Checkpoint]]:
    """A page of a Run's checkpoints, oldest first: ``limit`` (1..1000, default 100) after
    the checkpoint_id ``after``; ``Link: <...>; rel="next"`` names the next page."""
    page, next_after = orch.checkpoints.list(run_id, tenant, after=after, limit=limit)
    headers = {}
    if next_after is not None:
        query = urlencode({"limit": limit, "after": next_after})
        headers["Link"] = f'</v1/runs/{quote(run_id)}/checkpoints?{query}>; rel="next"'
    return Response(page, headers=headers)


@get("/v1/pools")
async def list_pools(orch: Orch) -> list[PoolInfo]:
    """Every pool: engine, build fingerprint, models with sha256, replicas, load."""
    return orch.list_pools()


@get("/v1/pools/{pool_id:str}")
async def get_pool(pool_id: FromPath[str], orch: Orch) -> PoolInfo:
    """One pool."""
    return orch.get_pool(pool_id)


@get("/v1/capabilities")
async def capabilities(orch: Orch, tenant: Tenant) -> Capabilities:
    """Opaque model ids, context sizes, features, limits, server version; the caller's
    own sandbox directories (POLICY-3010)."""
    return orch.capabilities(tenant)


@get("/health", opt={"public": True})
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok", "server_version": SERVER_VERSION}


@get("/ready", opt={"public": True})
async def ready(orch: Orch) -> dict[str, Any]:
    """Readiness: every pool has a ready replica, else 503 POOL_UNREADY."""
    if not orch.pools.ready():
        raise PoolUnready("not every pool has a ready replica",
                          data={"pools": [p.pool_id for p in orch.list_pools()]})
    return {"status": "ready", "pools": [p.pool_id for p in orch.list_pools()]}


@get("/metrics", media_type=CONTENT_TYPE_LATEST)
async def metrics(orch: Orch) -> bytes:
    """Prometheus exposition of the server's metrics."""
    return generate_latest(orch.metrics.registry)


# -- the app ---------------------------------------------------------------------------


def create_app(config: ServerConfig, *, drivers: Drivers | None = None,
               tools: ToolsFactory = tool_registry,
               metrics_registry: Metrics | None = None,
               clock: Clock | None = None) -> Litestar:
    """Build the ASGI app; the lifespan runs the orchestrator (pools, flusher, steps).

    Args:
        config: operator config.
        drivers: engine name -> driver (default: :func:`default_drivers`); tests and
            benchmarks pass their own, e.g. a mock scripting faults (PLACE-5006).
        tools: builds the tool executors from ``config.tools`` (PLACE-5006).
        metrics_registry: metrics object (tests pass a fresh registry).
        clock: the time every timer of the server runs on (default: the system clock;
            tests pass a ``FakeClock`` and advance it, NERVE-4060).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with Orchestrator.running(config, drivers=drivers or default_drivers(),
                                        tools=tools, metrics=metrics_registry,
                                        clock=clock) as orch:
            app.state.orch = orch
            yield

    app = Litestar(
        route_handlers=[
            create_flow, get_flow, get_flow_by_hash, create_run, get_run, cancel_run,
            submit_step, get_step, cancel_step, stream_step, stream_ticket, list_pools, get_pool,
            append_fact, list_run_facts, stream_run_facts, list_flow_facts,
            create_checkpoint, list_checkpoints,
            capabilities, health, ready, metrics, docs_assets_router(), openai_router(),
            *NAV_ROUTES, *LLM_ROUTES, *RUN_ROUTES, *PROMPT_ROUTES, *BROWSE_ROUTES,
            *RECORDING_ROUTES,
            *POOL_ROUTES,
        ],
        dependencies={"orch": Provide(_orch, sync_to_thread=False),
                      "tenant": Provide(tenant_of, sync_to_thread=False)},
        guards=[require_token],
        exception_handlers={Exception: error_handler},
        before_send=[add_correlation_id],
        lifespan=[lifespan],
        middleware=[HttpMetrics(),
                    DefineMiddleware(CorsMiddleware, allowed_origins=config.allowed_origins),
                    DefineMiddleware(EdgeGuard, no_auth=not config.auth_tokens,
                                     allowed_hosts=config.allowed_hosts,
                                     allowed_origins=config.allowed_origins)],
        request_class=JsonRequest,
        plugins=observability_plugins(),
        state=State({"max_json_depth": config.max_json_depth,
                     "stream_tickets": StreamTickets()}),
        request_max_body_size=config.max_body_bytes,
        openapi_config=OpenAPIConfig(title="orchestratord", version="0.1.0",
                                     path="/schema", security=SECURITY,
                                     components=SECURITY_COMPONENTS,
                                     render_plugins=[swagger_plugin()]),
        debug=False,
    )
    complete_document(app)
    return app
