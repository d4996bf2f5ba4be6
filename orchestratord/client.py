"""The Python clients for orchestratord, as an interpreter uses them (NERVE-4110).

:class:`Client` (blocking, on ``httpx.Client``) and :class:`AsyncClient` (on
``httpx.AsyncClient``) have the same methods over every route of the native API, as
openai-python's ``OpenAI`` and ``AsyncOpenAI`` do. Both are thin shells over one sans-IO
core (:mod:`orchestratord.client_calls`, :mod:`orchestratord.client_routes`).
:class:`OrchestratorClient` is the async client's former name.

Errors come back as the typed :class:`contracts.errors.OrchestratorError` subclasses,
also under the client contract's ``ERR_*`` names (NERVE-4072); stream frames as
:class:`Frame` whose ``data`` is the frame's payload Struct from :mod:`contracts.events`
(``TokenData``, ``EndData``, ``ErrorEnvelope``, ...). The transport is injectable, like
httpx's own (``transport=httpx.MockTransport(handler)``). Nothing is retried unless
``max_retries`` says so (NERVE-4112). Imports nothing of the server.
"""

from __future__ import annotations

from orchestratord.client_async import AsyncClient
from orchestratord.client_errors import (
    ERR_CONTEXT_BUDGET,
    ERR_INVALID_MODEL,
    ERR_SERVER,
    ERR_STREAM_DISCONNECTED,
    StreamDisconnected,
)
from orchestratord.client_frames import (
    Frame,
    StepResult,
    SubmittedStream,
    SyncSubmittedStream,
    UntypedData,
)
from orchestratord.client_sync import Client

__all__ = ["ERR_CONTEXT_BUDGET", "ERR_INVALID_MODEL", "ERR_SERVER", "ERR_STREAM_DISCONNECTED",
           "AsyncClient", "Client", "Frame", "OrchestratorClient", "StepResult",
           "StreamDisconnected", "SubmittedStream", "SyncSubmittedStream", "UntypedData"]

OrchestratorClient = AsyncClient
"""The async client's former name, kept for existing callers."""
