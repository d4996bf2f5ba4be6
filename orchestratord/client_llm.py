"""The async Python client's ``llm`` namespace: the client contract's lifecycle
(NERVE-4089): ``capabilities``, ``enqueue``, ``stream``, ``cancel``.

``OrchestratorClient(...).llm`` is an :class:`AsyncLlm` over the client's connection.
Answers decode into the :mod:`contracts.llm` Structs, stream events into the tagged union
:data:`contracts.llm.LlmStreamEvent`, refusals into the typed
:class:`contracts.errors.OrchestratorError` subclasses (``ERR_INVALID_MODEL``,
``ERR_CONTEXT_BUDGET``, ``ERR_SERVER``), and a stream that ends without ``done`` or
``error`` raises :class:`~orchestratord.client_errors.StreamDisconnected`
(``ERR_STREAM_DISCONNECTED``). Nothing is retried. The client sends no ``client_token``
of its own invention: without one the server derives it from the body (NERVE-4082).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from httpx_sse import aconnect_sse

from contracts.errors import ErrorEnvelope, error_from_envelope
from contracts.llm import LlmCapabilities, LlmJob, LlmJobInfo, LlmStreamEvent
from contracts.steps import CancelAccepted
from orchestratord.client_errors import StreamDisconnected

if TYPE_CHECKING:
    from orchestratord.client import OrchestratorClient

__all__ = ["AsyncLlm"]

_event = msgspec.json.Decoder(LlmStreamEvent)
_env = msgspec.json.Decoder(ErrorEnvelope)
_TERMINAL = frozenset({"done", "error"})


class AsyncLlm:
    """The ``llm`` namespace of :class:`~orchestratord.client.OrchestratorClient`.

    Args:
        client: the client whose connection, auth and error decoding it uses.
    """

    def __init__(self, client: OrchestratorClient) -> None:
        self._client = client

    async def capabilities(self) -> LlmCapabilities:
        """``GET /v1/llm/capabilities``: opaque model ids, server version, limits
        (NERVE-4080)."""
        resp = await self._client._call("GET", "/v1/llm/capabilities")
        return msgspec.json.decode(resp.content, type=LlmCapabilities)

    async def enqueue(self, model: str, prompt: str, *,
                      response_contract: Mapping[str, Any] | None = None,
                      attachments: Mapping[str, bytes] | None = None,
                      metadata: Mapping[str, Any] | None = None,
                      run_id: str | None = None,
                      client_token: str | None = None) -> LlmJob:
        """``POST /v1/llm/jobs``: enqueue a job (NERVE-4081).

        Args:
            model: an id exactly as :meth:`capabilities` lists it.
            prompt: sent to the engine byte for byte.
            response_contract: a JSON Schema the output must satisfy.
            attachments: name -> bytes (sent as base64; stored content-addressed).
            metadata: opaque JSON, stored and returned.
            run_id: the Run to put the job in (default: the tenant's job Run).
            client_token: the job's idempotency key; None lets the server derive one
                from the body and its occurrence, never at random.

        Returns:
            ``{id, model, enqueued_at}``.

        Raises:
            InvalidModel: ``ERR_INVALID_MODEL``.
            ContextBudget: ``ERR_CONTEXT_BUDGET``.
            OrchestratorError: any other refusal (``ERR_SERVER``), its typed subclass.
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
        resp = await self._client._call("POST", "/v1/llm/jobs", body)
        return msgspec.json.decode(resp.content, type=LlmJob)

    async def get(self, job_id: str) -> LlmJobInfo:
        """``GET /v1/llm/jobs/{id}``: status, Run, metadata, attachments (NERVE-4084)."""
        resp = await self._client._call("GET", f"/v1/llm/jobs/{job_id}")
        return msgspec.json.decode(resp.content, type=LlmJobInfo)

    async def stream(self, job_id: str, last_event_id: int | None = None) -> \
            AsyncIterator[LlmStreamEvent]:
        """Yield the job's events until ``done`` or ``error`` (NERVE-4085).

        Args:
            job_id: the job.
            last_event_id: resume after this event id (``StreamDisconnected`` carries
                the last one received); a job already past it yields nothing.

        Raises:
            OrchestratorError: the stream was refused (its typed subclass).
            StreamDisconnected: it ended, or its connection broke, before ``done`` or
                ``error`` (``ERR_STREAM_DISCONNECTED``); nothing is retried.
        """
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        http: httpx.AsyncClient = self._client._http
        last = last_event_id
        async with aconnect_sse(http, "GET", f"/v1/llm/jobs/{job_id}/events",
                                headers=headers, timeout=None) as source:
            resp = source.response
            if resp.status_code >= 400:
                await resp.aread()
                raise error_from_envelope(_env.decode(resp.content))
            if resp.status_code == 204:
                return  # nothing after last_event_id: the job had ended there
            try:
                async for sse in source.aiter_sse():
                    if sse.event not in ("token", "log", "narration", "error", "done"):
                        continue  # a comment, or an event newer than this client
                    if sse.id and sse.event != "narration":
                        last = int(sse.id)
                    yield _event.decode(sse.data)
                    if sse.event in _TERMINAL:
                        return
            except httpx.TransportError as exc:
                raise StreamDisconnected(job_id, last,
                                         f"{type(exc).__name__}: {exc}") from exc
        raise StreamDisconnected(job_id, last, "the server closed the stream")

    async def cancel(self, job_id: str) -> CancelAccepted | LlmJobInfo:
        """``POST /v1/llm/jobs/{id}/cancel`` (NERVE-4088).

        Returns:
            ``CancelAccepted`` (202) while the job is live; the finished job (200).
        """
        resp = await self._client._call("POST", f"/v1/llm/jobs/{job_id}/cancel")
        if resp.status_code == 202:
            return msgspec.json.decode(resp.content, type=CancelAccepted)
        return msgspec.json.decode(resp.content, type=LlmJobInfo)
