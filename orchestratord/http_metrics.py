"""HTTP request duration by route template (OBS-8051).

A pure ASGI middleware: it times each HTTP request from its first byte in to its last
byte out (an SSE stream's whole life) and observes ``http_request_duration_ms{method,
route, status}``. ``route`` is the path template Litestar matched (``/v1/steps/{step_id}``),
never the raw path, so the label's cardinality is the number of routes. ``/metrics``
itself is not observed: a scrape moves no metric of its own (OBS-8052). Litestar runs
app middleware only on matched routes, so a 404 for an unknown path is not observed.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HttpMetrics"]

_UNMATCHED = "<unmatched>"


class HttpMetrics(ASGIMiddleware):
    """Observe each HTTP request's duration on the orchestrator's metrics."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send,
                     next_app: ASGIApp) -> None:
        """Run the app, remember the status, observe the duration when it returns; the
        time is the server's injected clock."""
        orch = getattr(scope["app"].state, "orch", None)
        if orch is None:
            await next_app(scope, receive, send)
            return
        start = orch.clock.monotonic()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_wrapper)
        finally:
            route = scope.get("path_template") or _UNMATCHED
            if route != "/metrics":
                orch.metrics.http_duration_ms.labels(
                    method=scope.get("method", ""), route=route, status=str(status)).observe(
                        (orch.clock.monotonic() - start) * 1000.0)
