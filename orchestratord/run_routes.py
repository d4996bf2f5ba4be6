"""The Run lifecycle routes: close a Run (NERVE-4103) and stream every frame of every
Step of a Run (NERVE-4100, NERVE-4101).

``GET /v1/runs/{run_id}/stream`` is the run stream: SSE events whose ``id:`` is the
frame's run position and whose ``data`` is a :class:`~contracts.run_life.RunFrame`,
ending with one ``run_end`` event once the Run is closed and none of its Steps is live.
``Last-Event-ID`` resumes after a position; at or after the ``run_end`` event's id the
answer is 204 No Content, so a browser's ``EventSource`` stops. A browser opens it with a
ticket from ``POST /v1/runs/{run_id}/stream-ticket`` instead of the bearer token
(NERVE-4054).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from contracts.errors import InvalidParams
from contracts.run_life import RUN_END_EVENT, RunClose, RunEndData, RunFrame
from contracts.runs import Run
from contracts.tickets import RunStreamTicket
from orchestrator_core.service import Orchestrator
from orchestratord.sse import SSE_HEADERS, SseStream
from orchestratord.tickets import MAX_TICKET_CHARS, TICKET_TTL_MS, StreamTickets

__all__ = ["RUN_ROUTES", "RUN_STREAM_EVENT", "close_run", "run_stream_schemas",
           "run_stream_ticket", "stream_run"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]


def _cursor(request: Request[Any, Any, Any]) -> int | None:
    """``Last-Event-ID`` as a run position, read from the raw ASGI headers; None when
    absent.

    Raises:
        InvalidParams: not an integer in ``[0, 2**63)`` (``data.field``
            ``"Last-Event-ID"``).
    """
    raw = next((value.decode("latin-1") for name, value in request.scope["headers"]
                if name == b"last-event-id"), None)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and int(raw) < 2**63):
        raise InvalidParams("Last-Event-ID must be a run position (an integer in "
                            "[0, 2**63))", data={"field": "Last-Event-ID",
                                                 "last_event_id": raw[:64]})
    return int(raw)


@post("/v1/runs/{run_id:str}/close", status_code=200)
async def close_run(run_id: FromPath[str], data: JSONBody[RunClose], orch: Orch,
                    tenant: Tenant) -> Run:
    """Close a Run ``completed``, ``failed`` or ``cancelled`` (NERVE-4103): it then
    refuses new Steps. ``completed`` is 409 while Steps are live; ``failed`` and
    ``cancelled`` cancel them. The same status again is idempotent (200), another is 409.
    The Run carries its ``summary`` once none of its Steps is live (NERVE-4104)."""
    return orch.runs.close(run_id, data.status, tenant)


@post("/v1/runs/{run_id:str}/stream-ticket", status_code=200)
async def run_stream_ticket(run_id: FromPath[str], request: Request[Any, Any, Any],
                            orch: Orch, tenant: Tenant) -> RunStreamTicket:
    """A 60 s ticket that opens this Run's stream without a bearer token (NERVE-4054)."""
    orch.get_run(run_id, tenant)
    tickets: StreamTickets = request.app.state.stream_tickets
    return RunStreamTicket(ticket=tickets.issue(run_id, tenant, orch.clock.monotonic()),
                           run_id=run_id, expires_in_ms=TICKET_TTL_MS)


@get("/v1/runs/{run_id:str}/stream", media_type="text/event-stream", opt={"ticket": True})
async def stream_run(run_id: FromPath[str], request: Request[Any, Any, Any], orch: Orch,
                     tenant: Tenant,
                     ticket: Annotated[str | None, Parameter(
                         max_length=MAX_TICKET_CHARS,
                         description="A ticket from `POST /v1/runs/{run_id}/stream-ticket` "
                                     "for this Run, instead of the bearer token "
                                     "(NERVE-4054).")] = None) -> Stream | Response[None]:
    """SSE stream of every durable frame of every Step of the Run in commit order,
    ``id:`` the run position, then ``run_end`` once the Run is closed with no live Step
    (NERVE-4100, NERVE-4101). ``Last-Event-ID`` resumes after that position; at or after
    the ``run_end`` event it answers 204 No Content. ``ticket`` (from ``POST
    /v1/runs/{run_id}/stream-ticket``) stands in for the bearer token (NERVE-4054)."""
    stream = orch.runs.open_stream(run_id, _cursor(request),
                                   orch.config.heartbeat_ms / 1000.0, tenant)
    if stream.ended_before():
        return Response(None, status_code=204, headers=SSE_HEADERS)
    return SseStream(stream)


RUN_ROUTES = [close_run, run_stream_ticket, stream_run]
"""The route handlers the app registers."""


RUN_STREAM_EVENT = "RunStreamEvent"
"""The OpenAPI component of one run stream event (NERVE-4033, NERVE-4100)."""


def run_stream_schemas(ref_template: str) -> dict[str, dict[str, Any]]:
    """The OpenAPI components of the run stream: ``RunFrame``, ``RunEndData`` and
    :data:`RUN_STREAM_EVENT` (one SSE event, its fields as strings).

    Args:
        ref_template: e.g. ``"#/components/schemas/{name}"``.
    """
    _, defs = msgspec.json.schema_components([RunFrame, RunEndData],
                                             ref_template=ref_template)
    ref = ref_template.format
    defs[RUN_STREAM_EVENT] = {
        "type": "object", "required": ["id", "event", "data"],
        "description": "One SSE event of a run stream: `id:` the frame's run position, "
                       "`event:` the frame type and `data:` a `RunFrame` (the Step, its "
                       f"`seq` and the frame's data); the last event is `{RUN_END_EVENT}`, "
                       "`id:` the Run's frame count, `data:` a `RunEndData` (NERVE-4100, "
                       "NERVE-4101). `: keep-alive` comments may come between.",
        "properties": {
            "id": {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [{"$ref": ref(name="RunFrame")},
                                                 {"$ref": ref(name="RunEndData")}]}}}}
    return defs
