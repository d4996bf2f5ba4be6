"""The HTTP side of a Step's SSE stream: a lean Litestar response around :class:`StepStream`.

:class:`SseStream` is a Litestar :class:`~litestar.response.Stream` for everything that
happens before the body (the route's guard, tenant, 404 and ``Last-Event-ID`` checks,
the OpenAPI document, the response headers, ``X-Correlation-Id`` from the app's
``before_send`` hook), but its ASGI body is a plain coroutine: the stream's pump writes
each chunk with one ``send``. Litestar's own streaming body runs an extra task per
response to watch for the disconnect and iterates an async generator; here the
disconnect is a done-callback on the pending ``receive()`` (Granian resolves it when a
write finds the connection closed, STREAM-2002), so a subscriber costs no task beyond
the one serving its request. Like the event log's subscriptions, it needs the asyncio
event loop (the loop Granian runs the app on).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from litestar.response import Stream
from litestar.response.base import ASGIResponse

from orchestrator_core.streams import StepStream

if TYPE_CHECKING:
    from litestar.app import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures.cookie import Cookie
    from litestar.enums import MediaType
    from litestar.types import HTTPResponseBodyEvent, Receive, Send, TypeEncodersMap

__all__ = ["SSE_HEADERS", "SseStream", "accepts_event_stream"]

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers of every SSE response (specs/20_stream_and_replay.md §1)."""

_MEDIA_TYPE = "text/event-stream"
_ACCEPT_SCAN_BYTES = 4096
"""How much of an ``Accept`` header is looked at; a longer one is judged by its start."""


def accepts_event_stream(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request's ``Accept`` header names ``text/event-stream`` (STREAM-2010).

    Only an explicit ``text/event-stream`` media range with a quality above 0 counts:
    ``*/*``, ``text/*`` or no header at all keep the JSON answer. The header is read from
    the raw ASGI pairs (lower-case names), at most its first 4 KiB, with plain string
    operations (linear in its length).

    Args:
        headers: the ASGI scope's ``headers``.

    Returns:
        True when the client asks for the stream.
    """
    for name, value in headers:
        if name != b"accept":
            continue
        for media_range in value[:_ACCEPT_SCAN_BYTES].decode("latin-1").split(","):
            kind, *params = media_range.split(";")
            if kind.strip().lower() != _MEDIA_TYPE:
                continue
            quality = next((p.split("=", 1)[1].strip() for p in params
                            if p.strip().lower().startswith("q=")), "1")
            if quality.strip("0.") != "":  # "0", "0.0", "0.000": refused
                return True
    return False


class _DisconnectWatch:
    """Hangs the stream up when ``receive()`` yields ``http.disconnect`` (or fails).

    With Granian, ``receive()`` is already a future, so watching it costs a callback
    and no task; other servers' coroutines are wrapped in a task.
    """

    __slots__ = ("_pending", "_receive", "_stream")

    def __init__(self, receive: Receive, stream: StepStream) -> None:
        self._receive = receive
        self._stream = stream
        self._pending: asyncio.Future[Any] | None = None
        self._arm()

    def _arm(self) -> None:
        fut = self._pending = asyncio.ensure_future(self._receive())
        fut.add_done_callback(self._received)

    def _received(self, fut: asyncio.Future[Any]) -> None:
        if fut is not self._pending or fut.cancelled():
            return
        self._pending = None
        if fut.exception() is None and fut.result().get("type") != "http.disconnect":
            self._arm()  # e.g. a request body nobody reads: keep listening
            return
        self._stream.hang_up()

    def stop(self) -> None:
        """Stop watching (the response is over)."""
        fut, self._pending = self._pending, None
        if fut is not None and not fut.done():
            fut.cancel()


class _SseBody(ASGIResponse):
    """The ASGI response: Litestar's start message, then :meth:`StepStream.pump`."""

    __slots__ = ("stream",)

    _should_set_content_length: ClassVar[bool] = False

    def __init__(self, stream: StepStream, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stream = stream

    async def send_body(self, send: Send, receive: Receive) -> None:
        """Pump the stream into ``send``; a disconnect ends it at the next wake-up.

        Args:
            send: the ASGI send function.
            receive: the ASGI receive function; its next message can only be
                ``http.disconnect`` (the request has no body to read).
        """
        stream = self.stream
        watch = _DisconnectWatch(receive, stream)

        async def write(chunk: bytes) -> None:
            event: HTTPResponseBodyEvent = {"type": "http.response.body", "body": chunk,
                                            "more_body": True}
            await send(event)

        try:
            await stream.pump(write)
            end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"",
                                          "more_body": False}
            await send(end)
        finally:
            watch.stop()


class SseStream(Stream):
    """The response of ``GET /v1/steps/{id}/stream``, and of ``POST /v1/runs/{id}/steps``
    with ``Accept: text/event-stream``: documented and started like a
    :class:`~litestar.response.Stream`, bodied by a :class:`StepStream` (STREAM-2000,
    STREAM-2010).

    Args:
        stream: the validated stream of the Step.
        status_code: the HTTP status (200; 201 for a Step the request created).
        headers: headers besides :data:`SSE_HEADERS` (e.g. ``Location``, ``X-Step-Id``).
    """

    __slots__ = ("stream",)

    def __init__(self, stream: StepStream, *, status_code: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__((), media_type=_MEDIA_TYPE, status_code=status_code,
                         headers={**SSE_HEADERS, **headers} if headers else SSE_HEADERS)
        self.stream = stream

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        """The ASGI response, with the headers :class:`Stream` would send.

        Args:
            app: unused (deprecated by Litestar).
            request: the request.
            background: background tasks to run after the response.
            cookies: cookies added by outer layers.
            encoded_headers: unused (deprecated by Litestar).
            headers: headers added by outer layers (the response's own win).
            is_head_response: a HEAD request (no body is sent).
            media_type: unused: always ``text/event-stream``.
            status_code: status when the response has none.
            type_encoders: unused (the body is bytes).

        Returns:
            The response to call with ``(scope, receive, send)``.
        """
        merged = {**headers, **self.headers} if headers is not None else self.headers
        all_cookies = self.cookies if cookies is None else itertools.chain(self.cookies, cookies)
        return _SseBody(self.stream, background=self.background or background,
                        content_length=0, cookies=all_cookies, encoding=self.encoding,
                        headers=merged, is_head_response=is_head_response,
                        media_type=_MEDIA_TYPE, status_code=self.status_code or status_code)
