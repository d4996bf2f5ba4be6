"""The client contract's LLM jobs, with no HTTP in sight (NERVE-4080..NERVE-4089).

A job is an ``llm_call`` Step. This module holds the rules around it; the routes
(:mod:`orchestratord.llm_routes`) submit the Step through the orchestrator like any
other:

* :func:`check_metadata` and :func:`decode_attachments` bound what a job brings
  (NERVE-4087); :func:`call_input` is the Step's input: the model, the raw ``prompt``
  and the ``response_contract``, nothing else, so neither the metadata nor the
  attachments are part of the prompt hash (NERVE-4081, NERVE-4083).
* :func:`job_key` and :class:`~orchestrator_core.openai_map.Occurrences` (prefix
  ``job:``) derive a missing ``client_token`` (NERVE-4082).
* :func:`tenant_run` finds, or makes, the Run the server keeps for the tenant's jobs.
* :func:`record_job` stores the job record with its attachments, content-addressed;
  :func:`get_job` reads it back, tenant-checked (NERVE-4083, NERVE-4084).
* :class:`JobStream` is the Step's own SSE stream with each frame mapped onto the
  contract's events (NERVE-4085).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any

import msgspec

from contracts.errors import Conflict, InvalidParams, NotFound
from contracts.events import (
    EscalationData,
    StartedData,
    TokenData,
    decode_frame_data,
    sse_frame,
)
from contracts.llm import (
    AttachmentRef,
    DoneEvent,
    ErrorEvent,
    LlmCapabilities,
    LlmEnqueue,
    LlmJobInfo,
    LlmModel,
    LlmStreamEvent,
    LogEvent,
    NarrationEvent,
    TokenEvent,
)
from contracts.pools import Capabilities
from contracts.runs import RunStatus
from contracts.steps import LlmCallInput, Step
from orchestrator_core.bounds import ValueTooDeep, json_size
from orchestrator_core.canonical import b3, canonical_json
from orchestrator_core.rows import LlmJobRow
from orchestrator_core.store_base import Store
from orchestrator_core.streams import StepStream, Write

__all__ = [
    "JOB_LIMITS",
    "JOB_PREFIX",
    "MAX_ATTACHMENT_BYTES",
    "MAX_JOB_ATTACHMENT_BYTES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "JobStream",
    "call_input",
    "check_metadata",
    "decode_attachments",
    "get_job",
    "job_info",
    "job_key",
    "llm_capabilities",
    "map_frames",
    "record_job",
    "tenant_run",
]

JOB_PREFIX = "job:"
"""Every derived job client_token starts with this (``job:<hash hex>:<n>``)."""
MAX_ATTACHMENT_BYTES = 256 * 1024
"""The largest attachment, in decoded bytes."""
MAX_JOB_ATTACHMENT_BYTES = 512 * 1024
"""The most attachment bytes (decoded) one job may bring."""
MAX_ATTACHMENTS = 16
"""The most attachments one job may bring (also bounded by the wire type)."""
MAX_METADATA_BYTES = 16 * 1024
"""The largest ``metadata``, in bytes of compact JSON."""
MAX_METADATA_DEPTH = 8
"""The deepest nesting of objects and lists in ``metadata`` (the object itself is 1)."""
JOB_LIMITS = {"llm_max_attachment_bytes": MAX_ATTACHMENT_BYTES,
              "llm_max_job_attachment_bytes": MAX_JOB_ATTACHMENT_BYTES,
              "llm_max_attachments": MAX_ATTACHMENTS,
              "llm_max_metadata_bytes": MAX_METADATA_BYTES,
              "llm_max_metadata_depth": MAX_METADATA_DEPTH}
"""The job bounds, as ``GET /v1/llm/capabilities`` lists them (NERVE-4087)."""
_FEATURES = ("prompt", "messages", "stream", "response_contract")
_B64_CHARS = 4 * -(-MAX_ATTACHMENT_BYTES // 3)
"""The base64 length of the largest attachment: a longer text is refused unread."""
_enc = msgspec.json.Encoder()


# -- what a job brings -----------------------------------------------------------------


def _refuse(field: str, message: str, **data: Any) -> InvalidParams:
    return InvalidParams(f"{field}: {message}", data={"field": field, **data})


def check_metadata(metadata: dict[str, Any] | None) -> None:
    """Refuse metadata over :data:`MAX_METADATA_BYTES` or :data:`MAX_METADATA_DEPTH`
    (NERVE-4087). It is measured without encoding it (cost bounded by the limit).

    Raises:
        InvalidParams: ``data.field`` ``metadata``, ``data.reason`` ``size`` (with
            ``limit_bytes``) or ``depth`` (with ``limit_depth``).
    """
    if metadata is None:
        return
    try:
        size = json_size(metadata, MAX_METADATA_BYTES, MAX_METADATA_DEPTH)
    except ValueTooDeep:
        raise _refuse("metadata", f"nested deeper than {MAX_METADATA_DEPTH} levels",
                      reason="depth", limit_depth=MAX_METADATA_DEPTH) from None
    if size > MAX_METADATA_BYTES:
        raise _refuse("metadata", f"larger than {MAX_METADATA_BYTES} bytes of JSON",
                      reason="size", limit_bytes=MAX_METADATA_BYTES)


def decode_attachments(attachments: dict[str, str] | None) -> \
        list[tuple[AttachmentRef, bytes]]:
    """Decode and bound a job's attachments (NERVE-4083, NERVE-4087).

    Args:
        attachments: name -> standard base64 (with padding, no line breaks).

    Returns:
        ``(reference, bytes)`` by name; the reference's ``sha256`` is the hex SHA-256
        of the bytes and ``size`` their length.

    Raises:
        InvalidParams: ``data.field`` ``attachments.<name>`` for text that is not
            base64 (``reason`` ``base64``) or an attachment over
            :data:`MAX_ATTACHMENT_BYTES` (``reason`` ``size``), or ``attachments`` for
            more than :data:`MAX_JOB_ATTACHMENT_BYTES` in all (``reason``
            ``total_size``).
    """
    out: list[tuple[AttachmentRef, bytes]] = []
    total = 0
    for name in sorted(attachments or {}):
        text = (attachments or {})[name]
        field = f"attachments.{name}"
        if len(text) > _B64_CHARS:
            raise _refuse(field, f"larger than {MAX_ATTACHMENT_BYTES} bytes", reason="size",
                          limit_bytes=MAX_ATTACHMENT_BYTES)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _refuse(field, "not standard base64", reason="base64") from None
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise _refuse(field, f"larger than {MAX_ATTACHMENT_BYTES} bytes", reason="size",
                          limit_bytes=MAX_ATTACHMENT_BYTES)
        total += len(data)
        if total > MAX_JOB_ATTACHMENT_BYTES:
            raise _refuse("attachments", f"more than {MAX_JOB_ATTACHMENT_BYTES} bytes in all",
                          reason="total_size", limit_bytes=MAX_JOB_ATTACHMENT_BYTES)
        out.append((AttachmentRef(name=name, sha256=hashlib.sha256(data).hexdigest(),
                                  size=len(data)), data))
    return out


def call_input(body: LlmEnqueue) -> LlmCallInput:
    """The job's ``llm_call`` input: ``model``, the raw ``prompt`` (no chat template)
    and ``response_contract``; default sampling params (NERVE-4081). Metadata and
    attachments are not part of it, hence not of the prompt hash."""
    return LlmCallInput(model=body.model, prompt=body.prompt,
                        response_contract=body.response_contract)


def job_key(body: LlmEnqueue) -> str:
    """``b3:<hex>``: blake3 of the RFC 8785 JSON of the body as sent (absent fields
    absent), without ``client_token`` and ``run_id`` (NERVE-4082). The derived
    client_token is ``job:<hex>:<n>``, ``n`` counting earlier equal bodies in the same
    Run; the Run is left out so that the same job sent to a replay Run of its recording
    names the recorded Step.

    Raises:
        InvalidParams: the body holds a number with no canonical form.
    """
    value = msgspec.to_builtins(body)
    value.pop("client_token", None)
    value.pop("run_id", None)
    return b3(value)


# -- the tenant's Run ------------------------------------------------------------------


def tenant_run(store: Store, tenant: str, create: Callable[[], str]) -> str:
    """The Run kept for the tenant's jobs that name none: the one named before while it
    is active, else a new one from ``create`` (a record Run of the tenant's job Flow).

    It never awaits, so concurrent first jobs of a tenant share one Run.

    Args:
        store: the store.
        tenant: the caller's tenant.
        create: makes a new Run of the tenant and returns its id.

    Returns:
        The run_id.
    """
    run_id = store.tenant_job_run(tenant)
    row = store.get_run(run_id) if run_id is not None else None
    if row is not None and row.tenant == tenant and row.status == RunStatus.ACTIVE.value:
        return row.run_id
    run_id = create()
    store.set_tenant_job_run(tenant, run_id)
    return run_id


# -- the job record --------------------------------------------------------------------


def _json(value: Any) -> str:
    return canonical_json(value).decode()


def record_job(store: Store, tenant: str, step: Step, body: LlmEnqueue,
               attachments: list[tuple[AttachmentRef, bytes]]) -> LlmJobRow:
    """Store the job record of a Step and its attachments' bytes (NERVE-4083).

    The job's identity beyond the Step's input is its metadata and its attachments'
    names and hashes; the same client_token with other metadata or attachments is a
    conflict.

    Returns:
        The stored record (the earlier one when the Step already had it).

    Raises:
        Conflict: the Step's job record has other metadata or attachments
            (``data.field`` ``metadata`` or ``attachments``).
    """
    refs = [ref for ref, _ in attachments]
    meta = _json(body.metadata) if body.metadata is not None else None
    row = LlmJobRow(
        step_id=step.step_id, tenant=tenant, run_id=step.run_id, model=body.model,
        enqueued_at=step.created_at,
        job_hash=b3({"metadata": body.metadata,
                     "attachments": [[r.name, r.sha256] for r in refs]}),
        metadata=meta, attachments=_json(refs))
    if store.insert_llm_job(row, [(ref.sha256, data) for ref, data in attachments]):
        return row
    old = store.get_llm_job(step.step_id)
    assert old is not None
    if old.job_hash != row.job_hash:
        field = "metadata" if old.metadata != row.metadata else "attachments"
        raise Conflict(f"client_token {step.client_token} names a job with other {field}",
                       data={"field": field, "client_token": step.client_token,
                             "job_id": step.step_id})
    return old


def get_job(store: Store, job_id: str, tenant: str) -> LlmJobRow:
    """The tenant's job record.

    Raises:
        NotFound: no such job, or another tenant's (the same answer, NERVE-4086).
    """
    row = store.get_llm_job(job_id)
    if row is None or row.tenant != tenant:
        raise NotFound(f"no job {job_id}", data={"job_id": job_id})
    return row


_refs = msgspec.json.Decoder(list[AttachmentRef])


def job_info(row: LlmJobRow, step: Step) -> LlmJobInfo:
    """``GET /v1/llm/jobs/{id}``: the record with its Step's status (NERVE-4084)."""
    return LlmJobInfo(id=row.step_id, model=row.model, enqueued_at=row.enqueued_at,
                      status=step.status.value, run_id=row.run_id,
                      attachments=_refs.decode(row.attachments),
                      metadata=msgspec.json.decode(row.metadata)
                      if row.metadata is not None else None)


def llm_capabilities(caps: Capabilities) -> LlmCapabilities:
    """``GET /v1/llm/capabilities`` from the server's capabilities (NERVE-4080): each
    model with the contract's features added, and every limit with the job bounds."""
    models = [LlmModel(id=m.id, family=m.family, context_tokens=m.context_tokens,
                       features=list(dict.fromkeys((*_FEATURES, *m.features))))
              for m in caps.models]
    return LlmCapabilities(models=models, server_version=caps.server_version,
                           limits={**caps.limits, **JOB_LIMITS})


# -- the stream ------------------------------------------------------------------------


def _log_line(event: str, data: bytes) -> str:
    payload = decode_frame_data(event, data)
    if isinstance(payload, StartedData):
        line = (f"started: queue_position={payload.queue_position}, "
                f"predicted_start_ms={payload.predicted_start_ms}")
        if payload.placement is not None:
            line += (f", pool {payload.placement.pool_id}, "
                     f"replica {payload.placement.replica_id}")
        return line
    if isinstance(payload, EscalationData):
        return (f"escalation: {payload.kind} {payload.target} {payload.from_state.value}"
                f" -> {payload.to_state.value} after {payload.failures} failures: "
                f"{payload.reason}")
    return f"{event}: {data.decode()}"


def _event_of(event: str, data: bytes) -> LlmStreamEvent | None:
    """The contract's event for one frame, or None for a frame it has none for."""
    match event:
        case "token":
            return TokenEvent(text=msgspec.json.decode(data, type=TokenData).t)
        case "end":
            return DoneEvent()
        case "error":
            env = msgspec.json.decode(data)
            return ErrorEvent(code=str(env.get("code")), message=str(env.get("message")),
                              data=env.get("data"))
        case "narration":
            return NarrationEvent(text=str(msgspec.json.decode(data).get("text", "")))
        case "metrics":
            return None
        case _:
            return LogEvent(message=_log_line(event, data))


_KINDS = {TokenEvent: "token", LogEvent: "log", NarrationEvent: "narration",
          ErrorEvent: "error", DoneEvent: "done"}


def map_frames(chunk: bytes) -> bytes:
    """Map a chunk of a Step's SSE bytes onto the job stream's events (NERVE-4085).

    Each durable frame becomes one event with the same ``id:`` (``token`` -> ``token``,
    ``end`` -> ``done``, ``error`` -> ``error``, ``started``/``escalation``/others ->
    ``log``); ``narration`` passes through without ``id:``; ``metrics`` is dropped;
    comments (``: keep-alive``) are kept.

    Args:
        chunk: whole SSE events (single-line JSON data), as :class:`StepStream` writes.

    Returns:
        The mapped events, possibly empty.
    """
    out: list[bytes] = []
    for block in chunk.split(b"\n\n"):
        if not block:
            continue
        if block.startswith(b":"):
            out.append(block + b"\n\n")
            continue
        seq: int | None = None
        event = data = b""
        for line in block.split(b"\n"):
            key, _, value = line.partition(b": ")
            if key == b"id":
                seq = int(value)
            elif key == b"event":
                event = value
            elif key == b"data":
                data = value
        mapped = _event_of(event.decode(), data)
        if mapped is not None:
            out.append(sse_frame(seq, _KINDS[type(mapped)], _enc.encode(mapped)))
    return b"".join(out)


class JobStream(StepStream):
    """A job's SSE stream: the Step's own cursor over its log (same ``id:``, same
    ``Last-Event-ID`` resume, same 204 after the terminal frame), each chunk mapped by
    :func:`map_frames` before it is written (NERVE-4085)."""

    __slots__ = ()

    @classmethod
    def of(cls, stream: StepStream) -> JobStream:
        """The job stream over a validated, not yet started Step stream."""
        # a subclass reads its base's state: the stream is rebuilt, not wrapped
        return cls(stream._log, stream.step_id, stream.cursor,
                   stream.heartbeat_s, stream._on_abandoned)

    async def pump(self, write: Write) -> bool:
        """Write the mapped stream until its terminal frame, or until :meth:`hang_up`.

        Returns:
            True when the terminal frame was written (as ``done`` or ``error``).
        """

        async def mapped(chunk: bytes) -> None:
            out = map_frames(chunk)
            if out:
                await write(out)

        return await super().pump(mapped)
