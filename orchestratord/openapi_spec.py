"""What the served OpenAPI document says beyond what Litestar derives from the routes.

Litestar documents each route's success response from its return type, and a 400 in its
own ``{status_code, detail, extra}`` shape, which this server never sends. After the
document is built, :func:`complete_document` replaces every error response with the
flat envelope of :class:`~contracts.errors.ErrorEnvelope`, naming per route each status
it can answer and the codes behind it (:data:`ROUTE_ERRORS`), and adds what Litestar
cannot know (NERVE-4033): the SSE frame union (``SseFrame``) for the stream
routes, the bearer security scheme (``/health`` and ``/ready`` are public), the
``X-Correlation-Id`` request and response header, ``Last-Event-ID`` on the streams,
``Retry-After`` and ``X-Backoff-Ms`` on 429, the 200 of the idempotent creations, and
the Step submission's stream answer (STREAM-2010).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIResponse,
    Operation,
    Parameter,
    Schema,
    SecurityRequirement,
    SecurityScheme,
)

from contracts.errors import ErrorCode, ErrorEnvelope
from contracts.events import (
    EffectEndData,
    EndData,
    ErrorData,
    MetricsData,
    NarrationData,
    StartedData,
    TokenData,
    ToolSuggestData,
)
from contracts.facts import Fact
from contracts.openai import OaiErrorBody
from orchestrator_core.breaker import Transition
from orchestratord.run_routes import RUN_STREAM_EVENT, run_stream_schemas

__all__ = ["PUBLIC_ROUTES", "ROUTE_ERRORS", "SECURITY", "SECURITY_COMPONENTS",
           "complete_document"]

_REF = "#/components/schemas/{name}"
E = ErrorCode

_ORIGIN = (E.ORIGIN_NOT_ALLOWED,)
"""403 of every route on a server without tokens: a non-loopback ``Host`` (SEC-6000)."""
_BODY = {400: (E.INVALID_PARAMS,), 415: (E.UNSUPPORTED_MEDIA_TYPE,)}
"""Every route with a JSON body: a malformed or unknown-field body, a wrong media type."""

_FACADE = "/v1/runs/{run_id}/openai/v1"
"""The OpenAI-compatible facade (OAI-6000); its errors have OpenAI's shape (OAI-6005)."""
_FACADE_CALL: dict[int, tuple[ErrorCode, ...]] = {
    **_BODY, 400: (E.INVALID_PARAMS, E.INVALID_MODEL, E.CONTEXT_BUDGET),
    403: (E.POLICY_DENIED,), 404: (E.NOT_FOUND,),
    409: (E.CONFLICT, E.NONDETERMINISM, E.DETERMINISM_INPUTS_DIFFER, E.REPLAY_DIVERGED,
          E.CANCELLED),
    422: (E.CONTRACT_VIOLATION,), 429: (E.ADMISSION_REJECT, E.QUEUE_FULL, E.BUDGET_EXCEEDED),
    502: (E.ENGINE_ERROR,), 503: (E.POOL_UNREADY, E.POOL_UNAVAILABLE, E.CIRCUIT_OPEN,
                                  E.INTERRUPTED),
    504: (E.DEADLINE_EXCEEDED,)}

ROUTE_ERRORS: dict[str, dict[int, tuple[ErrorCode, ...]]] = {
    "POST /v1/flows": {**_BODY},
    "GET /v1/flows/{flow_id}": {404: (E.NOT_FOUND,)},
    "GET /v1/flows:by-hash/{flow_hash}": {404: (E.NOT_FOUND,)},
    "POST /v1/flows/{flow_id}/runs": {
        **_BODY, 404: (E.NOT_FOUND,), 409: (E.DETERMINISM_INPUTS_DIFFER, E.CONFLICT)},
    "GET /v1/runs/{run_id}": {404: (E.NOT_FOUND,)},
    "POST /v1/runs/{run_id}/cancel": {404: (E.NOT_FOUND,), 409: (E.CONFLICT,)},
    "POST /v1/runs/{run_id}/close": {**_BODY, 404: (E.NOT_FOUND,), 409: (E.CONFLICT,)},
    "GET /v1/runs/{run_id}/stream": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "POST /v1/runs/{run_id}/steps": {
        **_BODY,
        400: (E.INVALID_PARAMS, E.INVALID_TOOL_ARGS, E.INVALID_MODEL, E.CONTEXT_BUDGET),
        402: (E.BUDGET_EXCEEDED,),
        403: (E.POLICY_DENIED, E.FS_POLICY_VIOLATION),
        404: (E.NOT_FOUND,),
        409: (E.CONFLICT, E.NONDETERMINISM, E.DETERMINISM_INPUTS_DIFFER),
        429: (E.ADMISSION_REJECT, E.QUEUE_FULL),
        502: (E.ENGINE_ERROR,),
        503: (E.POOL_UNREADY, E.POOL_UNAVAILABLE, E.CIRCUIT_OPEN),
    },
    "GET /v1/steps/{step_id}": {404: (E.NOT_FOUND,)},
    "POST /v1/steps/{step_id}/cancel": {404: (E.NOT_FOUND,)},
    "GET /v1/steps/{step_id}/stream": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "POST /v1/steps/{step_id}/stream-ticket": {404: (E.NOT_FOUND,)},
    "POST /v1/runs/{run_id}/stream-ticket": {404: (E.NOT_FOUND,)},
    "GET /v1/steps/{step_id}/prompt": {404: (E.NOT_FOUND,)},
    "POST /v1/runs/{run_id}/facts": {**_BODY, 404: (E.NOT_FOUND,), 409: (E.CONFLICT,)},
    "GET /v1/runs/{run_id}/facts": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "GET /v1/runs/{run_id}/facts/stream": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "GET /v1/flows/{flow_id}/facts": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "POST /v1/runs/{run_id}/checkpoint": {**_BODY, 404: (E.NOT_FOUND,)},
    "GET /v1/runs/{run_id}/checkpoints": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "GET /v1/flows": {400: (E.INVALID_PARAMS,)},
    "GET /v1/flows/{flow_id}/runs": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "GET /v1/runs/{run_id}/steps": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "GET /v1/checkpoints/{checkpoint_id}": {404: (E.NOT_FOUND,)},
    "GET /v1/facts/{fact_id}": {404: (E.NOT_FOUND,)},
    "GET /v1/runs": {400: (E.INVALID_PARAMS,)},
    "GET /v1/pools": {},
    "GET /v1/pools/{pool_id}": {404: (E.NOT_FOUND,)},
    "GET /v1/capabilities": {},
    "GET /health": {},
    "GET /ready": {503: (E.POOL_UNREADY,)},
    "GET /metrics": {},
    **{f"POST {_FACADE}/{name}": _FACADE_CALL for name in ("chat/completions", "completions")},
    f"GET {_FACADE}/models": {404: (E.NOT_FOUND,)},
    "GET /v1/llm/capabilities": {},
    "POST /v1/llm/jobs": {
        **_BODY, 400: (E.INVALID_PARAMS, E.INVALID_MODEL, E.CONTEXT_BUDGET),
        402: (E.BUDGET_EXCEEDED,), 403: (E.POLICY_DENIED,), 404: (E.NOT_FOUND,),
        409: (E.CONFLICT, E.NONDETERMINISM, E.DETERMINISM_INPUTS_DIFFER),
        429: (E.ADMISSION_REJECT, E.QUEUE_FULL), 502: (E.ENGINE_ERROR,),
        503: (E.POOL_UNREADY, E.POOL_UNAVAILABLE, E.CIRCUIT_OPEN)},
    "GET /v1/llm/jobs/{job_id}": {404: (E.NOT_FOUND,)},
    "GET /v1/llm/jobs/{step_id}/events": {400: (E.INVALID_PARAMS,), 404: (E.NOT_FOUND,)},
    "POST /v1/llm/jobs/{job_id}/cancel": {404: (E.NOT_FOUND,)},
    "GET /v1/runs/{run_id}/recording": {404: (E.NOT_FOUND,), 409: (E.CONFLICT,)},  # REC-7010
    "POST /v1/recordings": {**_BODY},  # REC-7011
    "POST /v1/pools/provision": {**_BODY, 403: (E.POLICY_DENIED,),  # PLACE-5100
                                 409: (E.CONFLICT,)},
    "POST /v1/pools/{pool_id}/replicas/{replica}/drain": {403: (E.POLICY_DENIED,),
                                                          404: (E.NOT_FOUND,)},  # PLACE-5108
}
"""Per operation (``METHOD path``), each error status it can answer and the codes behind
it, besides the 401 of every non-public route and the 403 of every route (NERVE-4033)."""

PUBLIC_ROUTES = frozenset({"GET /health", "GET /ready"})
"""Operations the bearer guard lets through without a token (``opt={"public": True}``)."""

_CREATED_OR_EXISTING = frozenset({"POST /v1/flows", "POST /v1/runs/{run_id}/steps",
                                  "POST /v1/runs/{run_id}/checkpoint", "POST /v1/llm/jobs"})
"""Idempotent creations: 201 when new, 200 with the same body when it already existed."""

_STEP_STREAM = "GET /v1/steps/{step_id}/stream"
"""The Step stream, which answers 204 to a re-read after its terminal frame (STREAM-2012)."""
_STREAMS = {_STEP_STREAM: "SseFrame",
            "GET /v1/runs/{run_id}/facts/stream": "FactFrame",
            "GET /v1/runs/{run_id}/stream": RUN_STREAM_EVENT}

_JOB_EVENTS = "GET /v1/llm/jobs/{step_id}/events"
"""A job's stream (NERVE-4085): its route documents its events; ``Last-Event-ID`` here."""

_STEP_CANCEL = "POST /v1/steps/{step_id}/cancel"
"""The Step cancel: 202 ``{status: "cancelling"}`` while live, 200 the finished Step."""

_SUBMIT = "POST /v1/runs/{run_id}/steps"
"""The submission, which answers JSON or, asked for, the Step's stream (STREAM-2010)."""

SECURITY_COMPONENTS = Components(security_schemes={"bearerAuth": SecurityScheme(
    type="http", scheme="bearer",
    description="`Authorization: Bearer <token>`; each configured token names one tenant. "
                "Required on every route but /health and /ready when the server has "
                "`auth_tokens`; without tokens the server answers loopback hosts only.")})
"""The bearer scheme, for ``OpenAPIConfig(components=...)`` (NERVE-4033)."""
SECURITY: list[SecurityRequirement] = [{"bearerAuth": []}]
"""The global security requirement, for ``OpenAPIConfig(security=...)``."""

_STATUS_TEXT = {400: "Bad request", 401: "Missing or wrong bearer token",
                402: "Budget exceeded", 403: "Refused by policy or origin", 404: "Not found",
                409: "Conflict with stored state", 415: "Body is not application/json",
                422: "The output missed the response_format",
                429: "Not admitted now; retry later", 502: "Engine failure",
                503: "No ready pool or replica, or a circuit is open",
                504: "The Step's deadline passed"}

_FRAMES: dict[str, tuple[str, bool]] = {
    "started": ("StartedData", True), "token": ("TokenData", True),
    "tool_suggest": ("ToolSuggestData", True), "fact": ("Fact", True),
    "checkpoint": ("CheckpointFrameData", True), "escalation": ("Transition", True),
    "end": ("EndFrameData", True), "error": ("ErrorData", True),
    "metrics": ("MetricsData", False), "narration": ("NarrationData", False),
}
"""SSE event name -> (schema of its ``data:`` line, durable: carries ``id:``)."""


class _Raw:
    """Mixin: a spec object rendered as a prepared JSON-Schema/OpenAPI dict."""

    raw: dict[str, Any]

    def to_schema(self) -> dict[str, Any]:
        """The prepared dict, verbatim."""
        return self.raw


class _RawSchema(_Raw, Schema):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__()
        self.raw = raw


class _RawResponse(_Raw, OpenAPIResponse):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(description=raw["description"])
        self.raw = raw


class _RawHeader(_Raw, OpenAPIHeader):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__()
        self.raw = raw


class _RawParameter(_Raw, Parameter):
    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(name=raw["name"], param_in=raw["in"])
        self.raw = raw


def _frame_schemas() -> dict[str, dict[str, Any]]:
    """The data Structs of every frame, each frame, and the ``SseFrame`` union."""
    _, defs = msgspec.json.schema_components(
        [StartedData, TokenData, ToolSuggestData, Fact, EndData, EffectEndData,
         ErrorEnvelope, ErrorData, Transition, MetricsData, NarrationData, OaiErrorBody],
        ref_template=_REF)
    ref = _REF.format
    defs["CheckpointFrameData"] = {
        "type": "object", "required": ["checkpoint_id", "hash"],
        "properties": {"checkpoint_id": {"type": "string"}, "hash": {"type": "string"}},
        "description": "`checkpoint`: the checkpoint a checkpoint Step stored."}
    defs["EndFrameData"] = {
        "description": "`end`: an LLM Step's provenance and output, or another Step "
                       "type's recorded result and provenance.",
        "anyOf": [{"$ref": ref(name="EndData")}, {"$ref": ref(name="EffectEndData")}]}
    defs.update(run_stream_schemas(_REF))
    members = {}
    for event, (data, durable) in _FRAMES.items():
        name = "".join(part.title() for part in event.split("_")) + "Frame"
        props: dict[str, Any] = {
            "event": {"const": event},
            "data": {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"$ref": ref(name=data)}}}
        if durable:
            props["id"] = {"type": "string", "pattern": "^[0-9]{1,20}$",
                           "description": "The frame's sequence number in the Step's log."}
        defs[name] = {"type": "object", "properties": props,
                      "required": ["event", "data", *(["id"] if durable else [])],
                      "description": f"`event: {event}`"
                                     + ("" if durable else " (ephemeral: no `id:`)")}
        members[event] = name
    defs["SseFrame"] = {
        "description": "One SSE event of a Step stream (OpenAPI 3.2's reading of "
                       "`text/event-stream`: one object per event, its fields as strings): "
                       "`id: <seq>` (durable frames only), `event: <type>` and `data: <one "
                       "line of JSON>` as the frame's own schema says. A stream ends after "
                       "`end` or `error`; `: keep-alive` comments may come between.",
        "oneOf": [{"$ref": ref(name=n)} for n in members.values()],
        "discriminator": {"propertyName": "event",
                          "mapping": {e: ref(name=n) for e, n in members.items()}}}
    return defs


def _error_response(key: str, status: int, codes: tuple[ErrorCode, ...]) -> dict[str, Any]:
    listed = ", ".join(f"`{c.value}`" for c in codes)
    headers: dict[str, Any] = {"X-Correlation-Id": _CORRELATION_OUT}
    if status == 429:
        headers["Retry-After"] = {"description": "Whole seconds to wait (rounded up).",
                                  "schema": {"type": "integer", "minimum": 1}}
        headers["X-Backoff-Ms"] = {"description": "Milliseconds to wait.",
                                   "schema": {"type": "integer", "minimum": 0}}
    if status == 401:
        headers["WWW-Authenticate"] = {"schema": {"type": "string"},
                                       "description": 'Bearer realm="orchestratord"'}
    if key.split(" ", 1)[1].startswith(_FACADE):
        if status == 429:
            headers = {**headers, "retry-after-ms": headers.pop("X-Backoff-Ms")}
        headers["x-should-retry"] = {"description": "Whether the SDK should retry.",
                                     "schema": {"enum": ["true", "false"]}}
        return {"description": f"{_STATUS_TEXT[status]}: {listed}", "headers": headers,
                "content": {"application/json": {"schema": {"allOf": [
                    {"$ref": _REF.format(name="OaiErrorBody")},
                    {"properties": {"error": {"properties": {
                        "code": {"enum": [c.value for c in codes]}}}}}]}}}}
    return {"description": f"{_STATUS_TEXT[status]}: {listed}", "headers": headers,
            "content": {"application/json": {"schema": {"allOf": [
                {"$ref": _REF.format(name="ErrorEnvelope")},
                {"properties": {"code": {"enum": [c.value for c in codes]}}}]}}}}


_CORRELATION_OUT = {"description": "The request's valid `X-Correlation-Id`, else a new UUIDv4.",
                    "schema": {"type": "string"}}
_CORRELATION_IN = {
    "name": "X-Correlation-Id", "in": "header", "required": False,
    "description": "Echoed on the response when it matches `[A-Za-z0-9._:-]{1,128}`; "
                   "otherwise the server sends a new UUIDv4.",
    "schema": {"type": "string"}}
_LAST_EVENT_ID = {
    "name": "Last-Event-ID", "in": "header", "required": False,
    "description": "Resume after this sequence number (an integer in [0, 2**63)); "
                   "anything else is 400 `INVALID_PARAMS`.",
    "schema": {"type": "string"}}
_SUBMIT_LAST_EVENT_ID = {
    **_LAST_EVENT_ID,
    "description": "Only with `Accept: text/event-stream`: resume the Step's stream after "
                   "this sequence number (an integer in [0, 2**63)); anything else is 400 "
                   "`INVALID_PARAMS`, before anything is admitted."}


_CANCELLING: dict[str, Any] = {
    "description": "The Step was live: its cancel is requested, and it ends with a "
                   "`CANCELLED` frame unless it finishes first (NERVE-4070).",
    "headers": {"X-Correlation-Id": _CORRELATION_OUT},
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {"status": {"type": "string", "enum": ["cancelling"]}}}}}}


def _submitted(status: int) -> dict[str, Any]:
    """A 201/200 of the submission: the Step as JSON, or its SSE stream (STREAM-2010)."""
    what = ("The Step was created" if status == 201
            else "The `client_token` already names this Step (nothing new runs)")
    return {
        "description": f"{what}. With `Accept: text/event-stream` (an explicit media range, "
                       "q > 0) the body is the Step's SSE stream of `SseFrame` events "
                       "from its first frame (or after `Last-Event-ID`), as `GET "
                       "/v1/steps/{step_id}/stream` would send it, and `X-Step-Id` and "
                       "`Location` name the Step; otherwise it is the Step as JSON.",
        "headers": {
            "X-Correlation-Id": _CORRELATION_OUT,
            "X-Step-Id": {"description": "The Step's id (stream answers only).",
                          "schema": {"type": "string"}},
            "Location": {"description": "`/v1/steps/{step_id}` (stream answers only).",
                         "schema": {"type": "string"}}},
        "content": {
            "application/json": {"schema": {"$ref": _REF.format(name="Step")}},
            "text/event-stream": {"schema": {"$ref": _REF.format(name="SseFrame")}}}}


def _errors_of(key: str) -> dict[int, tuple[ErrorCode, ...]]:
    errors = dict(ROUTE_ERRORS[key])
    errors[403] = tuple(dict.fromkeys((*errors.get(403, ()), *_ORIGIN)))
    if key not in PUBLIC_ROUTES:
        errors[401] = (E.UNAUTHORIZED,)
    return dict(sorted(errors.items()))


def _complete(key: str, op: Operation) -> None:
    responses = dict(op.responses or {})
    for status, response in list(responses.items()):
        if not status.startswith("2") or not isinstance(response, OpenAPIResponse):
            del responses[status]
            continue
        response.headers = {**(response.headers or {}),
                            "X-Correlation-Id": _RawHeader(_CORRELATION_OUT)}
    if key in _STREAMS:
        frame = _STREAMS[key]
        responses["200"] = _RawResponse({
            "description": f"An SSE stream of `{frame}` events (see the schema's "
                           "description for the framing). `Last-Event-ID` resumes after "
                           "that sequence number; a finished stream is replayed whole.",
            "headers": {"X-Correlation-Id": _CORRELATION_OUT},
            "content": {"text/event-stream": {"schema": {"$ref": _REF.format(name=frame)}}}})
    if key == _STEP_STREAM:
        responses["204"] = _RawResponse({
            "description": "`Last-Event-ID` is at or after the Step's terminal frame: "
                           "nothing is left to send, and the status makes a browser's "
                           "`EventSource` stop reconnecting (STREAM-2012).",
            "headers": {"X-Correlation-Id": _CORRELATION_OUT}})
    if key == "GET /v1/runs/{run_id}/stream":
        responses["204"] = _RawResponse({
            "description": "`Last-Event-ID` is at or after the `run_end` event: nothing is "
                           "left to send, so a browser's `EventSource` stops (NERVE-4101).",
            "headers": {"X-Correlation-Id": _CORRELATION_OUT}})
    if key == _STEP_CANCEL:
        responses["202"] = _RawResponse(_CANCELLING)
        responses["200"] = _RawResponse({
            "description": "The Step had already finished: it is returned unchanged.",
            "headers": {"X-Correlation-Id": _CORRELATION_OUT},
            "content": {"application/json": {"schema": {"$ref": _REF.format(name="Step")}}}})
    if key == _SUBMIT:
        responses["201"] = _RawResponse(_submitted(201))
        responses["200"] = _RawResponse(_submitted(200))
    elif key in _CREATED_OR_EXISTING and "201" in responses:
        created = responses["201"]
        assert isinstance(created, OpenAPIResponse)
        responses["200"] = OpenAPIResponse(
            description="It already existed: the same resource, unchanged.",
            headers=created.headers, content=created.content)
    for code_status, codes in _errors_of(key).items():
        responses[str(code_status)] = _RawResponse(_error_response(key, code_status, codes))
    op.responses = dict(sorted(responses.items()))
    params: list[Any] = [p for p in op.parameters or []
                         if getattr(p, "name", None) not in ("X-Correlation-Id", "Last-Event-ID")]
    params.append(_RawParameter(_CORRELATION_IN))
    if key in _STREAMS or key == _JOB_EVENTS:
        params.append(_RawParameter(_LAST_EVENT_ID))
    elif key == _SUBMIT:
        params.append(_RawParameter(_SUBMIT_LAST_EVENT_ID))
    op.parameters = params
    if key in PUBLIC_ROUTES:
        op.security = []


def complete_document(app: Litestar) -> None:
    """Complete the app's OpenAPI document in place (NERVE-4033); call once,
    right after building the app, before the document is first served.

    Raises:
        KeyError: a documented operation has no row in :data:`ROUTE_ERRORS`.
    """
    doc = app.openapi_schema
    for path, item in (doc.paths or {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            op = getattr(item, method, None)
            if op is not None:
                _complete(f"{method.upper()} {path}", op)
    assert doc.components is not None
    assert not isinstance(doc.components, list)
    schemas = dict(doc.components.schemas or {})
    for name, raw in _frame_schemas().items():
        schemas.setdefault(name, _RawSchema(raw))
    doc.components.schemas = dict(sorted(schemas.items()))
