"""CORS for the origins of the operator's ``allowed_origins`` (NERVE-4053).

A small ASGI middleware instead of Litestar's ``CORSConfig``: that one matches the
``Origin`` header with a Python ``re`` pattern on the event loop, adds its
``Access-Control-Allow-Headers``/``-Methods``/``-Expose-Headers`` to the answers of
origins it does not allow, and refuses a preflight with a plain-text 400. Here an
origin is allowed by an exact (case-insensitive) string comparison, an origin that is
not allowed gets no CORS header at all, and nothing else about the request changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "EXPOSED_HEADERS", "CorsMiddleware"]

ALLOWED_METHODS = "GET, POST"
"""The methods a preflight grants: every route of the API is one of them."""
ALLOWED_HEADERS = "Authorization, Content-Type, Last-Event-ID, X-Correlation-Id"
"""The request headers a preflight grants."""
EXPOSED_HEADERS = ("X-Step-Id, Location, X-Budget-Tokens-In-Remaining, "
                   "X-Budget-Tokens-Out-Remaining, X-Budget-Cost-Usd-Remaining, "
                   "X-Budget-Wall-Ms-Remaining, Retry-After, X-Backoff-Ms, X-Correlation-Id")
"""The response headers a page on an allowed origin may read."""
_MAX_AGE_S = "600"
_ORIGIN_SCAN = 512
"""An ``Origin`` longer than this is never an allowed one (no comparison is made)."""


class CorsMiddleware:
    """ASGI middleware: CORS headers for allowed origins, preflights answered here.

    A request whose ``Origin`` is one of ``allowed_origins`` gets
    ``Access-Control-Allow-Origin: <that origin>`` (never ``*``), ``Vary: Origin`` and
    ``Access-Control-Expose-Headers``; its preflight (``OPTIONS`` with
    ``Access-Control-Request-Method``) is answered 204 with the allowed methods and
    headers, before any guard. Everything else passes through unchanged.

    Args:
        app: the application it wraps.
        allowed_origins: ``scheme://host[:port]`` origins (compared case-insensitively,
            a trailing ``/`` ignored); empty: the middleware does nothing.
    """

    def __init__(self, app: ASGIApp, *, allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)

    def _allowed_origin(self, scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"origin":
                ok = len(value) <= _ORIGIN_SCAN and \
                    value.decode("latin-1").rstrip("/").lower() in self.allowed
                return value if ok else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an allowed preflight, add CORS headers to an allowed origin's answer,
        or pass the request on unchanged."""
        if not self.allowed or scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        origin = self._allowed_origin(scope)
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "OPTIONS" and any(
                name == b"access-control-request-method" for name, _ in scope["headers"]):
            await send({"type": "http.response.start", "status": 204, "headers": [
                (b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
                (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
                (b"access-control-max-age", _MAX_AGE_S.encode())]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                 (b"access-control-expose-headers", EXPOSED_HEADERS.encode())]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)
