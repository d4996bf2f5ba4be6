"""The sans-IO core of the Python clients (NERVE-4110, NERVE-4111, NERVE-4112).

Both :class:`~orchestratord.client_async.AsyncClient` and
:class:`~orchestratord.client_sync.Client` are thin shells over this module, as httpx's
own two clients are over its models: nothing here sends a byte or sleeps.

* A :class:`Call` describes one request (method, path, query, JSON body) with the parser
  that turns its answer into a ``contracts/`` Struct; a :class:`StreamCall` describes
  one SSE request. :mod:`orchestratord.client_routes` builds one of them per route.
* :class:`SseDecoder` turns SSE bytes, fed in chunks of any size, into events;
  :class:`FrameReader` turns those into typed values (a Step's
  :class:`~orchestratord.client_frames.Frame`, a job's event, a Run's Fact) and knows
  when a stream has reached its terminal event.
* :func:`error_of` decodes an error answer into the typed error of its code.
* :class:`RetryPolicy` says whether, and after how long, a failed attempt is sent again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import msgspec

from contracts.errors import ErrorEnvelope, OrchestratorError, error_from_envelope
from contracts.events import DURABLE_FRAMES, FrameType
from orchestratord.client_errors import StreamDisconnected
from orchestratord.client_tokens import StepTokens

__all__ = ["Call", "FrameReader", "RetryPolicy", "Sse", "SseDecoder", "StreamCall",
           "error_of", "with_token"]

T = TypeVar("T")
E = TypeVar("E")

_env_decoder = msgspec.json.Decoder(ErrorEnvelope)
_EPHEMERAL = frozenset(t.value for t in FrameType if t not in DURABLE_FRAMES)
STEP_TERMINALS = frozenset({"end", "error"})
"""The frame types that end a Step's stream."""
MAX_ERROR_MESSAGE_CHARS = 2000
"""How much of a non-JSON error body is kept as the error's message."""


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the parser of its answer (NERVE-4110).

    Attributes:
        method: ``GET`` or ``POST``.
        path: the path, already quoted, e.g. ``/v1/runs/run_1``.
        parse: decodes a successful answer (its body already read) into ``T``.
        params: the query; ``None`` values are left out.
        body: JSON-encodable body (a ``dict`` or a Struct); ``None`` sends no body.
        idempotent: True when sending it twice does what sending it once does (a GET, a
            content-addressed create, a submission with its ``client_token``); only such
            calls are ever retried (NERVE-4112).
        errors: False when ``parse`` reads error statuses too (``GET /ready``).
        content: raw bytes sent instead of a JSON ``body`` (a recording, REC-7011).
        content_type: the media type of ``content``.
    """

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    body: Any = None
    idempotent: bool = True
    errors: bool = True
    content: bytes | None = None
    content_type: str = "application/json"

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The ``httpx.Request`` of this call on ``http`` (its base URL and headers)."""
        if self.content is not None:
            return http.build_request(self.method, self.path, content=self.content,
                                      headers={"content-type": self.content_type})
        return _build(http, self.method, self.path, self.params, self.body, {}, stream=False)


@dataclass(frozen=True, slots=True)
class StreamCall(Generic[E]):
    """One SSE request and the decoder of its events (NERVE-4111).

    Attributes:
        method: ``GET``, or ``POST`` for a submission answered with its stream.
        path: the path, already quoted.
        subject: the id of the Step, Run or job streamed; a disconnect names it.
        decode: ``(seq, event, data) -> E``: one event as its typed value, or None to
            skip it (an event newer than the client). ``seq`` is the event's own ``id:``
            (None for an ephemeral frame).
        kind: what ``subject`` names (``step``, ``run``, ``job``), for
            :class:`StreamDisconnected`.
        terminals: the event names that end the stream; empty for a stream that ends
            only when the server closes it.
        body: JSON body of a POST.
        last_event_id: sent as ``Last-Event-ID``: the stream resumes after that event.
        idempotent: as :attr:`Call.idempotent`.
    """

    method: str
    path: str
    subject: str
    decode: Callable[[int | None, str, str], E | None]
    kind: str = "step"
    terminals: frozenset[str] = STEP_TERMINALS
    body: Any = None
    last_event_id: int | None = None
    idempotent: bool = True

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The ``httpx.Request`` of this stream: ``Accept: text/event-stream``, no read
        timeout (a stream may wait for a token as long as the engine takes)."""
        headers = {"accept": "text/event-stream", "cache-control": "no-store"}
        if self.last_event_id is not None:
            headers["last-event-id"] = str(self.last_event_id)
        return _build(http, self.method, self.path, None, self.body, headers, stream=True)

    def reader(self) -> FrameReader[E]:
        """A fresh :class:`FrameReader` for one answer of this stream."""
        return FrameReader(self.subject, self.decode, kind=self.kind,
                           terminals=self.terminals, last=self.last_event_id)


def _build(http: httpx.Client | httpx.AsyncClient, method: str, path: str,
           params: Mapping[str, Any] | None, body: Any, headers: dict[str, str], *,
           stream: bool) -> httpx.Request:
    query = {k: v for k, v in (params or {}).items() if v is not None}
    content = msgspec.json.encode(body) if body is not None else None
    if content is not None:
        headers = {**headers, "content-type": "application/json"}
    timeout: Any = httpx.Timeout(None, connect=http.timeout.connect) if stream \
        else httpx.USE_CLIENT_DEFAULT
    return http.build_request(method, path, params=query or None, content=content,
                              headers=headers or None, timeout=timeout)


def error_of(resp: httpx.Response) -> OrchestratorError:
    """The typed error of an error answer whose body has been read (NERVE-4072).

    Args:
        resp: an answer with status >= 400.

    Returns:
        The :class:`~contracts.errors.OrchestratorError` subclass of the envelope's
        ``code``; a body that is no envelope (a proxy's HTML page, say) gives an
        ``INTERNAL`` error whose message is its first 2000 characters.
    """
    try:
        env = _env_decoder.decode(resp.content)
    except msgspec.DecodeError:
        env = ErrorEnvelope(code="INTERNAL",  # type: ignore[arg-type]
                            message=f"HTTP {resp.status_code}: "
                                    f"{resp.text[:MAX_ERROR_MESSAGE_CHARS]}",
                            retriable=False)
    return error_from_envelope(env)


def with_token(tokens: StepTokens, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with a ``client_token``: its own, or one derived from the body and its
    occurrence in the Run (NERVE-4071), never a random one. Called once per submission,
    before the first attempt, so every retry carries the same token (NERVE-4112)."""
    if "client_token" in body:
        return body
    return {"client_token": tokens.claim(run_id, body), **body}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed attempt is sent again (NERVE-4112). The default retries nothing.

    Attributes:
        max_retries: attempts after the first; 0 (the default) never retries.
        backoff_s: the first wait (s) when the error names none; doubled each attempt.
        max_backoff_s: the longest wait (s), the server's ``retry_after_ms`` included.
    """

    max_retries: int = 0
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, idempotent: bool, attempt: int, exc: Exception) -> float | None:
        """The wait (s) before attempt ``attempt + 1``, or None to raise ``exc``.

        Only an idempotent call is retried, and only after a retriable
        :class:`OrchestratorError` (``retriable: true``; its ``retry_after_ms`` is
        honoured) or an ``httpx.TransportError``; never more than ``max_retries`` times.

        Args:
            idempotent: :attr:`Call.idempotent` of the call.
            attempt: attempts already made after the first (0 after the first failure).
            exc: what the attempt raised.
        """
        if attempt >= self.max_retries or not idempotent:
            return None
        if isinstance(exc, OrchestratorError):
            if not exc.retriable:
                return None
            if exc.retry_after_ms is not None:
                return min(self.max_backoff_s, exc.retry_after_ms / 1000)
        elif not isinstance(exc, httpx.TransportError):
            return None
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** attempt))


class Sse(msgspec.Struct, frozen=True):
    """One dispatched SSE event.

    Attributes:
        event: its ``event:`` (``message`` when it has none).
        data: its ``data:`` lines joined by ``\\n``.
        id: the value of its own ``id:`` line, or None when it had none (the event stream's
            last event id is carried over by :class:`SseDecoder`, not here).
    """

    event: str
    data: str
    id: str | None = None


class SseDecoder:
    """An incremental SSE parser over byte chunks, as the WHATWG event-stream rules say:
    lines end in ``\\r\\n``, ``\\n`` or ``\\r`` (a ``\\r\\n`` may be split over two
    chunks), ``:`` lines are comments, a blank line dispatches an event with data, and an
    unfinished event is dropped at the end of the stream (NERVE-4111).

    Attributes:
        last_event_id: the last ``id:`` seen, carried over events without one.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[Sse]:
        """The events completed by ``chunk``, in order."""
        buf = self._buf + chunk
        out: list[Sse] = []
        pos, end = 0, len(buf)
        while pos < end:
            start = pos
            nl, cr = buf.find(b"\n", pos), buf.find(b"\r", pos)
            if cr != -1 and (nl == -1 or cr < nl):
                if cr + 1 == end:
                    break  # a "\r\n" may be split over two chunks: wait for the next one
                stop, pos = cr, cr + (2 if buf[cr + 1:cr + 2] == b"\n" else 1)
            elif nl != -1:
                stop, pos = nl, nl + 1
            else:
                break
            event = self._line(buf[start:stop].decode("utf-8", "replace"))
            if event is not None:
                out.append(event)
        self._buf = buf[pos:]
        return out

    def _line(self, line: str) -> Sse | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = self.last_event_id = value
        return None

    def _dispatch(self) -> Sse | None:
        data, event, own = self._data, self._event, self._id
        self._data, self._event, self._id = [], "", None
        if not data:
            return None
        return Sse(event=event or "message", data="\n".join(data), id=own)


def _seq(value: str | None) -> int | None:
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 20:
        return None
    return int(value)


class FrameReader(Generic[E]):
    """Typed events of one stream answer, fed its bytes (NERVE-4111).

    An event's ``seq`` is its own ``id:`` line, None for an ephemeral frame
    (``metrics``, ``narration``). After a terminal event :attr:`done` is True and later
    bytes are ignored.

    Args:
        subject: the Step, Run or job id the stream belongs to.
        decode: as :attr:`StreamCall.decode`.
        kind: what ``subject`` names, for :class:`StreamDisconnected`.
        terminals: the event names that end the stream (none for a Fact stream).
        last: the ``Last-Event-ID`` the stream was opened with.

    Attributes:
        last: the ``id`` of the last durable event read (``last`` before the first).
        done: True once a terminal event was read.
    """

    def __init__(self, subject: str, decode: Callable[[int | None, str, str], E | None], *,
                 kind: str = "step", terminals: frozenset[str] = STEP_TERMINALS,
                 last: int | None = None) -> None:
        self.subject = subject
        self.decode = decode
        self.kind = kind
        self.terminals = terminals
        self.decoder = SseDecoder()
        self.last = last
        self.done = False

    def feed(self, chunk: bytes) -> list[E]:
        """The events completed by ``chunk``, up to and including a terminal one.

        Raises:
            msgspec.DecodeError: an event's data is not JSON.
        """
        out: list[E] = []
        for sse in self.decoder.feed(chunk):
            if self.done:
                break
            seq = _seq(sse.id) if sse.event not in _EPHEMERAL else None
            self.last = seq if seq is not None else self.last
            value = self.decode(seq, sse.event, sse.data)
            if value is not None:
                out.append(value)
            self.done = sse.event in self.terminals
        return out

    def broken(self, exc: Exception) -> StreamDisconnected:
        """The error to raise when the connection broke with ``exc`` (NERVE-4072)."""
        return StreamDisconnected(self.subject, self.last, f"{type(exc).__name__}: {exc}",
                                  kind=self.kind)

    def ended(self) -> StreamDisconnected | None:
        """The error to raise when the server closed the stream: None after a terminal
        event or for a stream that has none (NERVE-4072)."""
        if self.done or not self.terminals:
            return None
        return StreamDisconnected(self.subject, self.last, "the server closed the stream",
                                  kind=self.kind)
