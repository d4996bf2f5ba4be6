"""The OpenAI-compatible facade: ``/v1/runs/{run_id}/openai/v1`` (OAI-6000..OAI-6007).

``OpenAI(base_url=".../v1/runs/<run_id>/openai/v1", api_key=<bearer token>)`` works
unchanged: ``POST /chat/completions`` (streamed or not), ``POST /completions`` and
``GET /models``. Each call is one ``llm_call`` Step of the Run, submitted through
:meth:`Orchestrator.submit_step` like a native Step (budgets, policy, provenance and
metrics apply unchanged) and visible at ``GET /v1/steps/{id}`` (its id is in the
``X-Step-Id`` header). The Step's ``client_token`` is ``oai:<hash of the canonical
request>:<occurrence>``, so the Run's mode decides what a call does: ``record`` runs
inference, ``replay`` serves the recording, ``strict_replay`` runs it again and proves
the bytes. The pure rules are :mod:`orchestrator_core.openai_map`.

Every error of these routes, and only of these, has OpenAI's shape
``{"error": {"message", "type", "code", "param"}}`` with the status the SDK maps to its
error classes, ``x-should-retry`` telling the SDK whether to retry, and ``Retry-After``
when the server knows when (OAI-6005).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from contracts.errors import (
    BudgetExceeded,
    ErrorCode,
    ErrorEnvelope,
    Internal,
    InvalidParams,
    Nondeterminism,
    NotFound,
    OrchestratorError,
    error_from_envelope,
)
from contracts.events import EndData
from contracts.openai import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    OaiError,
    OaiErrorBody,
    OaiModel,
    OaiModelList,
    OaiUsage,
    ResponseMessage,
)
from contracts.steps import LlmCallInput, LlmCallSubmit, Step
from orchestrator_core.canonical import b3
from orchestrator_core.openai_map import (
    CALL_PREFIX,
    Occurrences,
    call_key,
    chat_input,
    completion_input,
    nearest_call,
    openai_field,
    tool_calls_of,
)
from orchestrator_core.service import Orchestrator
from orchestratord.failures import as_orchestrator_error
from orchestratord.sse import SSE_HEADERS

__all__ = ["BASE_PATH", "openai_error_handler", "openai_router"]

log = logging.getLogger("orchestratord.openai")
BASE_PATH = "/v1/runs/{run_id:str}/openai/v1"
"""Where the facade lives; the SDK's ``base_url`` is this with the Run id (OAI-6000)."""
_enc = msgspec.json.Encoder()
_MAX_RECORDED_SCAN = 1000
"""The most recorded calls :func:`nearest_call` compares with (the latest ones)."""
_STATUS = {ErrorCode.REPLAY_DIVERGED: 409, ErrorCode.CONTRACT_VIOLATION: 422,
           ErrorCode.DEADLINE_EXCEEDED: 504, ErrorCode.INTERRUPTED: 503,
           ErrorCode.CANCELLED: 409, ErrorCode.BUDGET_EXCEEDED: 429}
"""Statuses of errors that have no HTTP status of their own (stream errors), and of
``BUDGET_EXCEEDED`` (402 natively), which OpenAI reports as 429 ``insufficient_quota``."""
_TYPE = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 415: "invalid_request_error",
         422: "invalid_request_error", 429: "rate_limit_error"}
_occurrences: weakref.WeakKeyDictionary[Orchestrator, Occurrences] = \
    weakref.WeakKeyDictionary()

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]


# -- errors ----------------------------------------------------------------------------


def _param_of(problem: dict[str, Any]) -> str | None:
    """The request field a Litestar validation problem names (its ``key``), with the
    unknown field's name appended when it is one."""
    key = str(problem.get("key") or "")
    key = "" if key == "data" else key  # Litestar's name of the whole body
    message = str(problem.get("message", ""))
    if "unknown field `" in message:
        name = message.split("unknown field `", 1)[1].split("`", 1)[0]
        return f"{key}.{name}" if key else name
    return key or None


def _invalid_request(exc: ValidationException) -> OrchestratorError:
    """A body that failed validation: 400 naming the parameter (OAI-6005)."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    problem = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(problem.get("message", exc.detail))
    return InvalidParams(f"invalid request: {message}", data={"field": _param_of(problem)})


def _as_error(exc: Exception) -> OrchestratorError:
    return as_orchestrator_error(exc, invalid=_invalid_request)


def _error_body(err: OrchestratorError) -> tuple[int, OaiErrorBody]:
    status = _STATUS.get(err.code, err.http_status)
    param = (err.data or {}).get("field")
    if err.code is ErrorCode.INVALID_MODEL:  # the request's own field
        param = "model"
    kind = ("insufficient_quota" if isinstance(err, BudgetExceeded)
            else _TYPE.get(status, "server_error"))
    return status, OaiErrorBody(error=OaiError(
        message=err.message, type=kind, code=err.code.value,
        param=param if isinstance(param, str) else None))


def _error_response(err: OrchestratorError) -> Response[bytes]:
    status, body = _error_body(err)
    headers = {"x-should-retry": "true" if err.retriable else "false"}
    if err.retry_after_ms is not None:
        headers["Retry-After"] = str(max(1, -(-err.retry_after_ms // 1000)))
        headers["retry-after-ms"] = str(err.retry_after_ms)
    return Response(content=_enc.encode(body), status_code=status,
                    media_type="application/json", headers=headers)


def openai_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Any exception on a facade route as OpenAI's error body with its status (OAI-6005).

    The status is the error's own (400 ``BadRequestError``, 401, 403, 404, 409
    ``ConflictError``, 429 ``RateLimitError``, 5xx), except for stream errors and budgets
    (see ``_STATUS``); ``code`` is the server's ErrorCode and ``param`` its ``field``.
    """
    return _error_response(_as_error(exc))


# -- submitting a call -----------------------------------------------------------------


def _claims(orch: Orchestrator) -> Occurrences:
    claims = _occurrences.get(orch)
    if claims is None:
        claims = _occurrences[orch] = Occurrences()
    return claims


def _explain(orch: Orchestrator, tenant: str, run_id: str,
             req: ChatCompletionRequest | CompletionRequest, inp: LlmCallInput,
             err: Nondeterminism) -> Nondeterminism:
    """A replay's miss, naming the nearest recorded call and the first differing field
    in the request's own names (OAI-6004)."""
    data = dict(err.data or {})
    if data.get("field") != "client_token":
        field = data.get("field")
        if isinstance(field, str):
            data["field"] = openai_field(field.removeprefix("input"), req)
        return Nondeterminism(err.message, data=data)
    source = orch.get_run(run_id, tenant).replay_of or ""
    rows = [r for r in orch.store.list_steps(source)
            if r.type == "llm_call" and r.client_token.startswith(CALL_PREFIX)]
    recorded = [(r.step_id, msgspec.json.decode(r.input)) for r in rows[-_MAX_RECORDED_SCAN:]]
    found = nearest_call(recorded, msgspec.to_builtins(inp))
    token = str(data.get("client_token"))
    if found is None:
        return Nondeterminism(f"the recording (run {source}) has no call like this one "
                              f"(client_token {token}) and no recorded call near it",
                              data={**data, "field": None, "recorded_run_id": source})
    step_id, path = found
    field = openai_field(path, req)
    return Nondeterminism(
        f"the recording (run {source}) has no call like this one (client_token {token}); "
        f"the nearest recorded call is step {step_id}, which differs at {field}",
        data={**data, "field": field, "nearest_step_id": step_id, "recorded_run_id": source})


async def _submit(orch: Orchestrator, tenant: str, run_id: str,
                  req: ChatCompletionRequest | CompletionRequest, inp: LlmCallInput) -> Step:
    # The occurrence is claimed before the first await: concurrent identical calls get
    # distinct occurrences in one step of the event loop (OAI-6004). Only the Run's own
    # tenant may claim one: another tenant's calls must not shift the count.
    store = orch.store
    row = store.get_run(run_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"no run {run_id}", data={"run_id": run_id})
    token = _claims(orch).claim(run_id, call_key(req),
                                lambda t: store.get_step_by_token(run_id, t) is not None)
    try:
        step, _created = await orch.submit_step(
            run_id, LlmCallSubmit(client_token=token, input=inp), tenant)
    except Nondeterminism as err:
        raise _explain(orch, tenant, run_id, req, inp, err) from err
    return step


async def _frames(orch: Orchestrator, step_id: str) -> AsyncIterator[tuple[str, bytes]]:
    """``(frame type, data JSON)`` of every durable frame of a Step, waiting for new
    ones until the terminal frame (a cursor over its log, like its SSE stream)."""
    events = orch.log
    sub = events.subscribe(step_id)
    cursor = -1
    try:
        while True:
            frames, done = events.read(step_id, cursor)
            cursor += len(frames)
            for raw in frames:  # b"id: <seq>\nevent: <type>\ndata: <json>\n\n"
                _id, event, data = raw.split(b"\n", 3)[:3]
                yield event[7:].decode(), data[6:]
            if done:
                return
            await sub.wait()
    finally:
        events.unsubscribe(sub)


class _Origin(msgspec.Struct):
    """What a response is named after: the recorded call's creation time, and the call
    id derived from its client_token (so a replay answers what the recording did)."""

    call_id: str
    created: int
    step_id: str


def _origin(orch: Orchestrator, step: Step, prefix: str) -> _Origin:
    source = orch.store.get_step(step.replay_of_step) if step.replay_of_step else None
    created_at = source.created_at if source is not None else step.created_at
    created = int(datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp())
    return _Origin(call_id=f"{prefix}{b3(step.client_token)[3:35]}", created=created,
                   step_id=step.step_id)


def _usage(end: EndData) -> OaiUsage:
    prov = end.provenance
    return OaiUsage(prompt_tokens=prov.tokens_in, completion_tokens=prov.tokens_out,
                    total_tokens=prov.tokens_in + prov.tokens_out)


def _failed(data: bytes) -> OrchestratorError:
    return error_from_envelope(msgspec.json.decode(data, type=ErrorEnvelope))


async def _finished(orch: Orchestrator, step_id: str) -> EndData:
    async for event, data in _frames(orch, step_id):
        if event == "end":
            return msgspec.json.decode(data, type=EndData)
        if event == "error":
            raise _failed(data)
    raise Internal("the step's log ended without a terminal frame")


def _headers(origin: _Origin) -> dict[str, str]:
    return {"X-Step-Id": origin.step_id}


def _sse(value: msgspec.Struct | dict[str, Any]) -> bytes:
    return b"data: " + _enc.encode(value) + b"\n\n"


def _chat_message(end: EndData, req: ChatCompletionRequest, origin: _Origin) -> \
        tuple[ResponseMessage, str]:
    text = str(end.output.get("text", ""))
    finish = end.provenance.finish_reason or "stop"
    if req.tools and req.tool_choice != "none":
        calls, content = tool_calls_of(end.output.get("value"),
                                       origin.call_id.replace("chatcmpl-", "call_"))
        if calls:
            return ResponseMessage(role="assistant", content=None, tool_calls=calls), \
                "tool_calls"
        return ResponseMessage(role="assistant", content=content), finish
    return ResponseMessage(role="assistant", content=text), finish


async def _chat_stream(orch: Orchestrator, req: ChatCompletionRequest,
                       origin: _Origin) -> AsyncIterator[bytes]:
    tools = bool(req.tools) and req.tool_choice != "none"

    def chunk(delta: ChatDelta, finish: str | None = None) -> bytes:
        return _sse(ChatCompletionChunk(
            id=origin.call_id, created=origin.created, model=req.model,
            choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish)]))

    yield chunk(ChatDelta(role="assistant", content=""))
    try:
        async for event, data in _frames(orch, origin.step_id):
            if event == "token" and not tools:
                text = msgspec.json.decode(data)["t"]
                if text:
                    yield chunk(ChatDelta(content=text))
            elif event == "end":
                end = msgspec.json.decode(data, type=EndData)
                message, finish = _chat_message(end, req, origin)
                if message.tool_calls:
                    yield chunk(ChatDelta(tool_calls=[
                        {"index": i, **msgspec.to_builtins(c)}
                        for i, c in enumerate(message.tool_calls)]))
                elif tools and message.content:
                    yield chunk(ChatDelta(content=message.content))
                yield chunk(ChatDelta(), finish)
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield _sse(ChatCompletionChunk(id=origin.call_id, created=origin.created,
                                                   model=req.model, choices=[],
                                                   usage=_usage(end)))
            elif event == "error":
                raise _failed(data)
    except OrchestratorError as err:
        # After the first byte the status is sent: the SDK raises on an error chunk.
        yield _sse(_error_body(err)[1])
    yield b"data: [DONE]\n\n"


async def _completion_stream(orch: Orchestrator, req: CompletionRequest,
                             origin: _Origin) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None = None, usage: OaiUsage | None = None) -> bytes:
        choices = [] if usage else [CompletionChoice(index=0, text=text,
                                                     finish_reason=finish)]
        return _sse(Completion(id=origin.call_id, created=origin.created, model=req.model,
                               choices=choices, usage=usage))

    try:
        async for event, data in _frames(orch, origin.step_id):
            if event == "token":
                yield chunk(msgspec.json.decode(data)["t"])
            elif event == "end":
                end = msgspec.json.decode(data, type=EndData)
                yield chunk("", end.provenance.finish_reason or "stop")
                if req.stream_options is not None and req.stream_options.include_usage:
                    yield chunk("", usage=_usage(end))
            elif event == "error":
                raise _failed(data)
    except OrchestratorError as err:
        yield _sse(_error_body(err)[1])
    yield b"data: [DONE]\n\n"


# -- routes ----------------------------------------------------------------------------

_CHAT_DOC = {200: ResponseSpec(data_container=ChatCompletion, generate_examples=False,
                               description="A chat completion, or (with ``stream``) "
                                           "``text/event-stream`` of chat.completion.chunk")}
_COMPLETION_DOC = {200: ResponseSpec(data_container=Completion, generate_examples=False,
                                     description="A text completion, or (with ``stream``) "
                                                 "``text/event-stream`` of its chunks")}


@post("/chat/completions", status_code=200, responses=_CHAT_DOC)
async def chat_completions(run_id: FromPath[str], data: JSONBody[ChatCompletionRequest],
                           orch: Orch, tenant: Tenant) -> Response[Any]:
    """One chat call as an ``llm_call`` Step of the Run (OAI-6001..OAI-6004)."""
    step = await _submit(orch, tenant, run_id, data, chat_input(data))
    origin = _origin(orch, step, "chatcmpl-")
    if data.stream:
        return Stream(_chat_stream(orch, data, origin), media_type="text/event-stream",
                      headers={**SSE_HEADERS, **_headers(origin)})
    end = await _finished(orch, step.step_id)
    message, finish = _chat_message(end, data, origin)
    body = ChatCompletion(id=origin.call_id, created=origin.created, model=data.model,
                          choices=[ChatChoice(index=0, message=message,
                                              finish_reason=finish)],
                          usage=_usage(end))
    return Response(content=_enc.encode(body), media_type="application/json",
                    headers=_headers(origin))


@post("/completions", status_code=200, responses=_COMPLETION_DOC)
async def completions(run_id: FromPath[str], data: JSONBody[CompletionRequest],
                      orch: Orch, tenant: Tenant) -> Response[Any]:
    """One text completion as an ``llm_call`` Step of the Run (OAI-6001, OAI-6004)."""
    step = await _submit(orch, tenant, run_id, data, completion_input(data))
    origin = _origin(orch, step, "cmpl-")
    if data.stream:
        return Stream(_completion_stream(orch, data, origin), media_type="text/event-stream",
                      headers={**SSE_HEADERS, **_headers(origin)})
    end = await _finished(orch, step.step_id)
    body = Completion(id=origin.call_id, created=origin.created, model=data.model,
                      choices=[CompletionChoice(index=0, text=str(end.output.get("text", "")),
                                                finish_reason=end.provenance.finish_reason
                                                or "stop")],
                      usage=_usage(end))
    return Response(content=_enc.encode(body), media_type="application/json",
                    headers=_headers(origin))


@get("/models")
async def list_models(run_id: FromPath[str], orch: Orch, tenant: Tenant) -> OaiModelList:
    """Every served model id, for a Run the caller can see (OAI-6000)."""
    run = orch.get_run(run_id, tenant)
    created = int(datetime.fromisoformat(run.created_at.replace("Z", "+00:00")).timestamp())
    return OaiModelList(data=[OaiModel(id=m.id, created=created, owned_by=",".join(m.pools))
                              for m in orch.capabilities(tenant).models])


def openai_router() -> Router:
    """The facade's routes under :data:`BASE_PATH`, with their own error handler."""
    return Router(path=BASE_PATH, route_handlers=[chat_completions, completions, list_models],
                  exception_handlers={Exception: openai_error_handler}, tags=["openai"])
