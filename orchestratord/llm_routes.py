"""The client contract's LLM lifecycle over HTTP: capabilities, enqueue, stream, cancel
(NERVE-4080..NERVE-4089, ``specs/87_client_contract.md``).

A job is an ``llm_call`` Step submitted through :meth:`Orchestrator.submit_step` like any
other (policy, budgets, placement, replay and provenance apply unchanged), in the Run the
request names or in the Run the server keeps for the tenant. The rules live in
:mod:`orchestrator_core.llm_jobs`; this module translates HTTP.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from contracts.errors import NotFound, OrchestratorError
from contracts.flows import FlowCreate
from contracts.llm import LlmCapabilities, LlmEnqueue, LlmJob, LlmJobInfo, LlmStreamEvent
from contracts.runs import RunCreate
from contracts.steps import CancelAccepted, LlmCallSubmit
from orchestrator_core import llm_jobs
from orchestrator_core.openai_map import Occurrences
from orchestrator_core.service import Orchestrator
from orchestratord.sse import SSE_HEADERS, SseStream
from orchestratord.tickets import MAX_TICKET_CHARS

__all__ = ["LLM_ROUTES", "cancel_job", "enqueue_job", "get_job", "job_events",
           "llm_capabilities"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]

JOB_FLOW = FlowCreate(ast_ir={"orchestratord": "llm_jobs"},
                      labels={"orchestratord": "llm_jobs"})
"""The Flow of the Run the server keeps for each tenant's jobs (one per tenant)."""
_claims: weakref.WeakKeyDictionary[Orchestrator, Occurrences] = weakref.WeakKeyDictionary()


def _occurrences(orch: Orchestrator) -> Occurrences:
    claims = _claims.get(orch)
    if claims is None:
        claims = _claims[orch] = Occurrences(prefix=llm_jobs.JOB_PREFIX)
    return claims


def _new_job_run(orch: Orchestrator, tenant: str) -> str:
    """A record Run of the tenant's job Flow; a reader's disconnect never cancels its
    jobs (a job is cancelled by ``POST /v1/llm/jobs/{id}/cancel``)."""
    flow, _ = orch.create_flow(JOB_FLOW, tenant)
    run = orch.create_run(flow.flow_id, RunCreate(labels={"orchestratord": "llm_jobs"},
                                                  cancel_on_disconnect=False), tenant)
    return run.run_id


@get("/v1/llm/capabilities")
async def llm_capabilities(orch: Orch, tenant: Tenant) -> LlmCapabilities:
    """Opaque model ids with family, context size and features; the server version;
    every limit, the job bounds included (NERVE-4080)."""
    return llm_jobs.llm_capabilities(orch.capabilities(tenant))


@post("/v1/llm/jobs", status_code=201)
async def enqueue_job(data: JSONBody[LlmEnqueue], orch: Orch,
                      tenant: Tenant) -> Response[LlmJob]:
    """Enqueue a job, an ``llm_call`` Step: 201 when new, 200 when its ``client_token``
    already names it (NERVE-4081..NERVE-4083).

    Everything that can refuse the job (its metadata and attachments, then the Step's
    own admission: model, context, policy, budgets) is checked before anything is
    stored; the client_token's occurrence is claimed before the first await.
    """
    llm_jobs.check_metadata(data.metadata)
    attachments = llm_jobs.decode_attachments(data.attachments)
    store = orch.store
    if data.run_id is not None:
        row = store.get_run(data.run_id)
        if row is None or row.tenant != tenant:
            raise NotFound(f"no run {data.run_id}", data={"run_id": data.run_id})
        run_id = row.run_id
    else:
        run_id = llm_jobs.tenant_run(store, tenant, lambda: _new_job_run(orch, tenant))
    token = data.client_token or _occurrences(orch).claim(
        run_id, llm_jobs.job_key(data),
        lambda t: store.get_step_by_token(run_id, t) is not None)
    try:
        step, created = await orch.submit_step(
            run_id, LlmCallSubmit(client_token=token, input=llm_jobs.call_input(data)), tenant)
    except OrchestratorError as err:  # the job's own field names: ``model``, not ``input.model``
        field = (err.data or {}).get("field")
        if isinstance(field, str) and field.startswith("input."):
            err.data = {**(err.data or {}), "field": field.removeprefix("input.")}
        raise
    job = llm_jobs.record_job(store, tenant, step, data, attachments)
    return Response(LlmJob(id=job.step_id, model=job.model, enqueued_at=job.enqueued_at),
                    status_code=201 if created else 200)


@get("/v1/llm/jobs/{job_id:str}")
async def get_job(job_id: FromPath[str], orch: Orch, tenant: Tenant) -> LlmJobInfo:
    """A job with its status, Run, metadata and attachments (names, sha256, sizes);
    another tenant's job is 404 like an unknown id (NERVE-4084, NERVE-4086)."""
    row = llm_jobs.get_job(orch.store, job_id, tenant)
    return llm_jobs.job_info(row, orch.get_step(job_id, tenant))


_EVENTS_DOC = {200: ResponseSpec(
    data_container=LlmStreamEvent,  # type: ignore[arg-type]  # a union documents as oneOf
    media_type="text/event-stream", generate_examples=False,
    description="The job's events: `event: token|log|narration|error|done`, `data:` one "
                "line of JSON tagged on `type` (`LlmStreamEvent`), `id:` the frame's "
                "sequence number in the job's Step (narration has none). It ends after "
                "`done` or `error`."),
    204: ResponseSpec(data_container=None, generate_examples=False,
                      description="`Last-Event-ID` is at or after the terminal frame: "
                                  "nothing is left to send (STREAM-2012).")}


@get("/v1/llm/jobs/{step_id:str}/events", media_type="text/event-stream",
     opt={"ticket": True}, responses=_EVENTS_DOC)
async def job_events(step_id: FromPath[str], request: Request[Any, Any, Any], orch: Orch,
                     tenant: Tenant,
                     ticket: Annotated[str | None, Parameter(
                         max_length=MAX_TICKET_CHARS,
                         description="A ticket from `POST /v1/steps/{step_id}/stream-ticket`"
                                     " for this job's Step, instead of the bearer token "
                                     "(NERVE-4054).")] = None) -> Stream | Response[None]:
    """SSE stream of a job (``step_id`` is the job id): one event per durable frame of
    its Step, same ``id:``; ``Last-Event-ID`` resumes after it and a re-read at or after
    the terminal frame answers 204 (NERVE-4085)."""
    from orchestratord.app import _last_event_id  # the one Last-Event-ID parser

    llm_jobs.get_job(orch.store, step_id, tenant)
    stream = llm_jobs.JobStream.of(orch.open_stream(step_id, _last_event_id(request),
                                                    tenant=tenant))
    if stream.ended_before():
        return Response(None, status_code=204, headers=SSE_HEADERS)
    return SseStream(stream)


_CANCEL_DOC = {
    202: ResponseSpec(data_container=CancelAccepted, generate_examples=False,
                      description="The job was live: its cancel is requested; it ends with "
                                  "an `error` event of code `CANCELLED` unless it finishes "
                                  "first (NERVE-4088)."),
    200: ResponseSpec(data_container=LlmJobInfo, generate_examples=False,
                      description="The job had already finished: it is returned unchanged.")}


@post("/v1/llm/jobs/{job_id:str}/cancel", status_code=202, responses=_CANCEL_DOC)
async def cancel_job(job_id: FromPath[str], orch: Orch, tenant: Tenant) -> Response[Any]:
    """Cancel a job. Idempotent: 202 ``{status: "cancelling"}`` while it is live, 200
    with the job once it has finished (NERVE-4088)."""
    row = llm_jobs.get_job(orch.store, job_id, tenant)
    live = not orch.get_step(job_id, tenant).status.terminal
    step = orch.cancel_step(job_id, tenant)
    if live:
        return Response(CancelAccepted(), status_code=202)
    return Response(llm_jobs.job_info(row, step), status_code=200)


LLM_ROUTES = [llm_capabilities, enqueue_job, get_job, job_events, cancel_job]
"""The route handlers the app registers."""
