"""Wire types of the client contract's LLM lifecycle: capabilities, enqueue, stream,
cancel (NERVE-4080..NERVE-4089, ``specs/87_client_contract.md``).

A job is an ``llm_call`` Step: its ``id`` is the Step's id. The stream of a job is the
Step's own durable log, each frame mapped onto one event of the tagged union
:data:`LlmStreamEvent` (tag field ``type``); the SSE ``id:`` of an event is the frame's
sequence number in the Step, so ``Last-Event-ID`` resumes it.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from contracts.limits import Id, Token

__all__ = [
    "AttachmentName",
    "AttachmentRef",
    "DoneEvent",
    "ErrorEvent",
    "LlmCapabilities",
    "LlmEnqueue",
    "LlmJob",
    "LlmJobInfo",
    "LlmModel",
    "LlmStreamEvent",
    "LogEvent",
    "NarrationEvent",
    "TokenEvent",
]

AttachmentName = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                             pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
"""An attachment's name: 1..128 characters of ``[A-Za-z0-9_.-]``, not starting with a dot
or a dash (e.g. ``adr-013.md``)."""


class LlmModel(msgspec.Struct, frozen=True):
    """One model of ``GET /v1/llm/capabilities``; ``id`` is opaque (never parse it).

    ``context_tokens`` is the context window in tokens; ``features`` name what a job on
    it may use (``prompt``, ``messages``, ``stream``, ``response_contract``, ...).
    """

    id: str
    family: str
    context_tokens: int
    features: list[str]


class LlmCapabilities(msgspec.Struct, frozen=True):
    """``GET /v1/llm/capabilities`` (NERVE-4080): the models, the server version and
    every limit (bytes for ``*_bytes``, counts otherwise)."""

    models: list[LlmModel]
    server_version: str
    limits: dict[str, int]


class LlmEnqueue(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                 omit_defaults=True):
    """Body of ``POST /v1/llm/jobs`` (NERVE-4081).

    ``prompt`` reaches the engine byte for byte (no chat template). ``response_contract``
    is a JSON Schema the output must satisfy (the ``llm_call`` response_contract).
    ``attachments`` maps names to standard base64 bytes; ``metadata`` is opaque to the
    server, stored and returned. ``run_id`` puts the job in that Run, else in the Run
    the server keeps for the tenant. ``client_token`` is the job's idempotency key in
    its Run; without one the server derives ``job:<hash>:<n>`` (NERVE-4082).
    """

    model: Id
    prompt: str
    response_contract: dict[str, Any] | None = None
    attachments: Annotated[dict[AttachmentName, str], msgspec.Meta(max_length=16)] | \
        None = None
    metadata: dict[str, Any] | None = None
    run_id: Id | None = None
    client_token: Token | None = None


class LlmJob(msgspec.Struct, frozen=True):
    """The answer of ``POST /v1/llm/jobs``: the job's id (its Step id), its model and
    when it was enqueued (RFC 3339 UTC, ``Z``)."""

    id: str
    model: str
    enqueued_at: str


class AttachmentRef(msgspec.Struct, frozen=True):
    """A stored attachment: its name in the job, the hex sha256 of its bytes, its size
    in bytes (NERVE-4083)."""

    name: str
    sha256: str
    size: int


class LlmJobInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """``GET /v1/llm/jobs/{id}`` (NERVE-4084): the job, its Step's status (``queued``,
    ``running``, ``succeeded``, ``failed``, ``cancelled``, ``interrupted``), its Run, its
    attachments (by name order) and its metadata (absent when none was given)."""

    id: str
    model: str
    enqueued_at: str
    status: str
    run_id: str
    attachments: list[AttachmentRef]
    metadata: dict[str, Any] | None = None


class TokenEvent(msgspec.Struct, frozen=True, tag="token", tag_field="type"):
    """``event: token``: the text one engine token completes (may be ``""``)."""

    text: str


class LogEvent(msgspec.Struct, frozen=True, tag="log", tag_field="type"):
    """``event: log``: an informational frame of the Step (``started``, ``escalation``),
    rendered as one line."""

    message: str


class NarrationEvent(msgspec.Struct, frozen=True, tag="narration", tag_field="type"):
    """``event: narration``: narration the server emitted, passed through verbatim
    (never synthesized)."""

    text: str


class ErrorEvent(msgspec.Struct, frozen=True, tag="error", tag_field="type",
                 omit_defaults=True):
    """``event: error``: the Step failed (the last event); ``code`` is the server's
    error code (``CANCELLED``, ``CONTRACT_VIOLATION``, ...)."""

    code: str
    message: str
    data: dict[str, Any] | None = None


class DoneEvent(msgspec.Struct, frozen=True, tag="done", tag_field="type"):
    """``event: done``: the Step succeeded (the last event)."""


LlmStreamEvent = TokenEvent | LogEvent | NarrationEvent | ErrorEvent | DoneEvent
"""One event of a job's stream, tagged on ``type`` (NERVE-4085)."""
