"""The Python clients' ``llm`` namespace: the client contract's lifecycle (NERVE-4089):
``capabilities``, ``enqueue``, ``get``, ``stream``, ``cancel``.

``AsyncClient(...).llm`` is an :class:`AsyncLlm` and ``Client(...).llm`` an :class:`Llm`,
both over their client's connection; each method sends one Call built here
(NERVE-4110). Answers decode into the :mod:`contracts.llm` Structs, stream events into
the tagged union :data:`contracts.llm.LlmStreamEvent`, refusals into the typed
:class:`contracts.errors.OrchestratorError` subclasses (``ERR_INVALID_MODEL``,
``ERR_CONTEXT_BUDGET``, ``ERR_SERVER``), and a stream that ends without ``done`` or
``error`` raises :class:`~orchestratord.client_errors.StreamDisconnected`
(``ERR_STREAM_DISCONNECTED``, ``kind`` ``"job"``). Nothing is retried unless the client
has ``max_retries``, and an enqueue only when it names its ``client_token``
(NERVE-4112). The client sends no ``client_token`` of its own invention: without one
the server derives it from the body (NERVE-4082).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import msgspec

from contracts.llm import LlmCapabilities, LlmJob, LlmJobInfo, LlmStreamEvent
from contracts.steps import CancelAccepted
from orchestratord.client_calls import Call, StreamCall

if TYPE_CHECKING:
    from orchestratord.client_async import AsyncClient
    from orchestratord.client_sync import Client

__all__ = ["AsyncLlm", "Llm", "cancel", "capabilities", "enqueue", "get", "stream"]

_event = msgspec.json.Decoder(LlmStreamEvent)
_caps = msgspec.json.Decoder(LlmCapabilities)
_job = msgspec.json.Decoder(LlmJob)
_info = msgspec.json.Decoder(LlmJobInfo)
_accepted = msgspec.json.Decoder(CancelAccepted)
_EVENTS = frozenset({"token", "log", "narration", "error", "done"})
_TERMINAL = frozenset({"done", "error"})


def _path(job_id: str) -> str:
    return f"/v1/llm/jobs/{quote(job_id, safe=':')}"


def capabilities() -> Call[LlmCapabilities]:
    """``GET /v1/llm/capabilities``: opaque model ids, server version, limits
    (NERVE-4080)."""
    return Call("GET", "/v1/llm/capabilities", lambda resp: _caps.decode(resp.content))


def enqueue(model: str, prompt: str, *, response_contract: Mapping[str, Any] | None = None,
            attachments: Mapping[str, bytes] | None = None,
            metadata: Mapping[str, Any] | None = None, run_id: str | None = None,
            client_token: str | None = None) -> Call[LlmJob]:
    """``POST /v1/llm/jobs``: enqueue a job (NERVE-4081).

    Args:
        model: an id exactly as :func:`capabilities` lists it.
        prompt: sent to the engine byte for byte.
        response_contract: a JSON Schema the output must satisfy.
        attachments: name -> bytes (sent as base64; stored content-addressed).
        metadata: opaque JSON, stored and returned.
        run_id: the Run to put the job in (default: the tenant's job Run).
        client_token: the job's idempotency key; None lets the server derive one from
            the body and its occurrence, never at random (then the call is not retried).

    Returns:
        A Call answering ``{id, model, enqueued_at}``; sent, it raises ``InvalidModel``
        (``ERR_INVALID_MODEL``), ``ContextBudget`` (``ERR_CONTEXT_BUDGET``) or the typed
        subclass of any other refusal (``ERR_SERVER``).
    """
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    if response_contract is not None:
        body["response_contract"] = dict(response_contract)
    if attachments is not None:
        body["attachments"] = {name: base64.b64encode(data).decode()
                               for name, data in attachments.items()}
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if run_id is not None:
        body["run_id"] = run_id
    if client_token is not None:
        body["client_token"] = client_token
    return Call("POST", "/v1/llm/jobs", lambda resp: _job.decode(resp.content), body=body,
                idempotent=client_token is not None)


def get(job_id: str) -> Call[LlmJobInfo]:
    """``GET /v1/llm/jobs/{id}``: status, Run, metadata, attachments (NERVE-4084)."""
    return Call("GET", _path(job_id), lambda resp: _info.decode(resp.content))


def _decode(_seq: int | None, event: str, data: str) -> LlmStreamEvent | None:
    return _event.decode(data) if event in _EVENTS else None  # skip newer event names


def stream(job_id: str, *, last_event_id: int | None = None) -> StreamCall[LlmStreamEvent]:
    """``GET /v1/llm/jobs/{id}/events``: the job's events until ``done`` or ``error``
    (NERVE-4085), resuming after ``last_event_id``; a job already past it yields nothing
    (the server's 204)."""
    return StreamCall("GET", f"{_path(job_id)}/events", subject=job_id, decode=_decode,
                      kind="job", terminals=_TERMINAL, last_event_id=last_event_id)


def _cancelled(resp: httpx.Response) -> CancelAccepted | LlmJobInfo:
    if resp.status_code == 202:
        return _accepted.decode(resp.content)
    return _info.decode(resp.content)


def cancel(job_id: str) -> Call[CancelAccepted | LlmJobInfo]:
    """``POST /v1/llm/jobs/{id}/cancel`` (NERVE-4088): ``CancelAccepted`` (202) while
    the job is live; the finished job (200). Idempotent."""
    return Call("POST", f"{_path(job_id)}/cancel", _cancelled)


class AsyncLlm:
    """The ``llm`` namespace of :class:`~orchestratord.client_async.AsyncClient`; each
    method is the module function of its name, sent (NERVE-4089)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def capabilities(self) -> LlmCapabilities:
        """See :func:`capabilities`."""
        return await self._client.send(capabilities())

    async def enqueue(self, model: str, prompt: str, *,
                      response_contract: Mapping[str, Any] | None = None,
                      attachments: Mapping[str, bytes] | None = None,
                      metadata: Mapping[str, Any] | None = None, run_id: str | None = None,
                      client_token: str | None = None) -> LlmJob:
        """See :func:`enqueue`."""
        return await self._client.send(enqueue(
            model, prompt, response_contract=response_contract, attachments=attachments,
            metadata=metadata, run_id=run_id, client_token=client_token))

    async def get(self, job_id: str) -> LlmJobInfo:
        """See :func:`get`."""
        return await self._client.send(get(job_id))

    def stream(self, job_id: str,
               last_event_id: int | None = None) -> AsyncIterator[LlmStreamEvent]:
        """See :func:`stream`; raises ``StreamDisconnected`` when cut before the end."""
        return self._client.frames(stream(job_id, last_event_id=last_event_id))

    async def cancel(self, job_id: str) -> CancelAccepted | LlmJobInfo:
        """See :func:`cancel`."""
        return await self._client.send(cancel(job_id))


class Llm:
    """The ``llm`` namespace of :class:`~orchestratord.client_sync.Client`, blocking;
    the same methods as :class:`AsyncLlm` (NERVE-4110)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def capabilities(self) -> LlmCapabilities:
        """See :func:`capabilities`."""
        return self._client.send(capabilities())

    def enqueue(self, model: str, prompt: str, *,
                response_contract: Mapping[str, Any] | None = None,
                attachments: Mapping[str, bytes] | None = None,
                metadata: Mapping[str, Any] | None = None, run_id: str | None = None,
                client_token: str | None = None) -> LlmJob:
        """See :func:`enqueue`."""
        return self._client.send(enqueue(
            model, prompt, response_contract=response_contract, attachments=attachments,
            metadata=metadata, run_id=run_id, client_token=client_token))

    def get(self, job_id: str) -> LlmJobInfo:
        """See :func:`get`."""
        return self._client.send(get(job_id))

    def stream(self, job_id: str, last_event_id: int | None = None) -> Iterator[LlmStreamEvent]:
        """See :func:`stream`; raises ``StreamDisconnected`` when cut before the end."""
        return self._client.frames(stream(job_id, last_event_id=last_event_id))

    def cancel(self, job_id: str) -> CancelAccepted | LlmJobInfo:
        """See :func:`cancel`."""
        return self._client.send(cancel(job_id))
