"""Traces from the standard ``OTEL_*`` variables, and the request span, correlation id and
access log of every request (OBS-8000..OBS-8009, OBS-8021).

Tracing is set up by :func:`configure_tracing` from the environment only, as the
OpenTelemetry SDK's specification names it:

* ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp`` (OTLP over HTTP/protobuf,
  configured by ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ...), ``console`` (one JSON object per
  span on standard output) and ``none``. Unset or ``none``: no SDK is installed, nothing
  is exported, the request middleware skips tracing, and every span of the core is the
  API's no-op (OBS-8001). (The SDK's own default is ``otlp``; this server exports nothing
  unless asked.)
* ``OTEL_SDK_DISABLED=true`` disables it whatever the exporter says;
  ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` name the resource (default
  service name ``orchestratord``); ``OTEL_TRACES_SAMPLER[_ARG]`` and ``OTEL_BSP_*`` are
  read by the SDK itself; ``OTEL_PROPAGATORS`` picks the propagators (default W3C
  ``tracecontext`` and ``baggage``).

When tracing is on, outgoing ``httpx`` requests (the ``openai_http`` replicas, the
llama.cpp worker's server, HTTP tool executors) are instrumented by
``opentelemetry-instrumentation-httpx``: each is a client span that carries
``traceparent`` to the engine (OBS-8014).

The request span comes from Litestar's OpenTelemetry plugin, which wraps the router with
``opentelemetry-instrumentation-asgi``; :class:`ObservedRequests` is its middleware class,
which also gives each request its correlation id and writes its access-log line, traced
or not (OBS-8021).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, MutableMapping
from typing import Any

import re2
import structlog
from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.plugins import InitPlugin
from litestar.plugins.opentelemetry import (
    OpenTelemetryConfig,
    OpenTelemetryInstrumentationMiddleware,
    OpenTelemetryPlugin,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span

from orchestratord.logs import request_state, structured_logging_configured

__all__ = ["EXPORTERS", "ObservedRequests", "configure_tracing", "instrument_http_clients",
           "observability_plugins", "tracing_enabled"]

log = logging.getLogger("orchestratord.access")
EXPORTERS = ("otlp", "console", "none")
"""The values ``OTEL_TRACES_EXPORTER`` may list (OBS-8001)."""
_CORRELATION_RE = re2.compile(r"^[A-Za-z0-9._:-]{1,128}$")
"""The ``X-Correlation-Id`` values echoed (as the app's ``before_send`` hook does)."""
_SPAN_KEY = "orchestratord.server_span"


def _exporters(names: list[str]) -> list[SpanExporter]:
    out: list[SpanExporter] = []
    for name in names:
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            out.append(OTLPSpanExporter())
    return out


def configure_tracing(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Install the global tracer provider the ``OTEL_*`` variables ask for (OBS-8000).

    Args:
        environ: the variables that choose the exporters (default: ``os.environ``);
            the SDK and the OTLP exporter read their own settings from ``os.environ``.

    Returns:
        The provider (call ``shutdown()`` on it at exit: it flushes the batch), or None
        when nothing is to be exported (no SDK installed, OBS-8001).

    Raises:
        SystemExit: ``OTEL_TRACES_EXPORTER`` names an exporter other than ``otlp``,
            ``console`` or ``none``, or OTLP is asked for over another protocol than
            ``http/protobuf`` (one line naming the variable and the fix).
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")
             if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise SystemExit(f"orchestratord: OTEL_TRACES_EXPORTER={','.join(names)}: "
                         f"unknown exporter {unknown[0]!r}; use one of "
                         f"{', '.join(EXPORTERS)}")
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if "otlp" in names and protocol != "http/protobuf":
        raise SystemExit(f"orchestratord: OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this "
                         "server exports OTLP over http/protobuf only; unset it or set "
                         "it to http/protobuf")
    exporters = _exporters([n for n in names if n != "none"])
    if not exporters:
        return None
    named = env.get("OTEL_SERVICE_NAME") or \
        "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {SERVICE_NAME: "orchestratord"})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrument_http_clients(provider)
    return provider


def instrument_http_clients(provider: trace.TracerProvider | None) -> None:
    """Instrument every ``httpx`` client of the process: a client span per request, and
    ``traceparent`` injected into it (OBS-8014). ``None`` removes the instrumentation.

    Args:
        provider: the tracer provider of the client spans.
    """
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    inst = HTTPXClientInstrumentor()
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()
    if provider is not None:
        inst.instrument(tracer_provider=provider)


def tracing_enabled() -> bool:
    """Whether a tracer provider with an SDK behind it is installed (OBS-8001)."""
    return not isinstance(trace.get_tracer_provider(),
                          trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The request span's name before routing: the method alone, as the HTTP semantic
    conventions name a span whose route is not known yet (a raw path would make one span
    name per id). :class:`ObservedRequests` renames it ``{method} {route}`` once routed."""
    return str(scope.get("method", "HTTP")), {}


def _server_request_hook(span: Span, scope: dict[str, Any]) -> None:
    """Keep the server span for renaming; a stream ticket never reaches a span."""
    scope[_SPAN_KEY] = span
    query = scope.get("query_string", b"")
    if span.is_recording() and b"ticket=" in query:
        clean = "&".join("ticket=[REDACTED]" if part.startswith("ticket=") else part
                         for part in query.decode("latin-1").split("&"))
        attributes = getattr(span, "attributes", None) or {}
        for key in ("url.query", "http.url", "url.full"):
            value = attributes.get(key)
            if isinstance(value, str):
                base = value.partition("?")[0] if key != "url.query" else ""
                span.set_attribute(key, f"{base}?{clean}" if base else clean)


class ObservedRequests(OpenTelemetryInstrumentationMiddleware):
    """The outermost middleware of the router: correlation id, request span, access log.

    For every HTTP request, matched or not (OBS-8021):

    * the ``X-Correlation-Id`` it sent (when valid), else a new UUIDv4, is put in the
      request's headers, so the app's ``before_send`` hook echoes this same id, and
      bound as ``correlation_id`` for every log line written while it is served, and in
      the Steps it admits;
    * when tracing is on, the OpenTelemetry ASGI middleware makes its server span
      (``traceparent`` accepted, OBS-8002), renamed ``{method} {route}`` with
      ``http.route`` once Litestar has routed it;
    * one access-log line when the response is done: ``method``, ``route`` (the path
      template, never the raw path or query), ``status``, ``duration_ms``.
    """

    def __init__(self, app: ASGIApp, config: OpenTelemetryConfig) -> None:
        super().__init__(app, config)
        self.inner = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one connection: an HTTP request is observed (OBS-8002, OBS-8021, OBS-8022);
        anything else (lifespan, websocket) is passed on untouched."""
        if scope["type"] != ScopeType.HTTP:
            await self.inner(scope, receive, send)
            return
        orch = getattr(getattr(scope.get("app"), "state", None), "orch", None)
        clock = orch.clock if orch is not None else None  # time is injected (NERVE-4060)
        t0 = clock.monotonic() if clock is not None else 0.0
        cid = self._correlation_id(scope)
        status = 0
        trace_id = None

        async def observed_send(message: Message) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                trace_id = self._name_span(scope)
            await send(message)

        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        token = request_state.set(state)
        try:
            with structlog.contextvars.bound_contextvars(correlation_id=cid):
                try:
                    if tracing_enabled():
                        await self.open_telemetry_middleware(
                            scope, receive, observed_send)  # type: ignore[arg-type]
                    else:
                        await self.inner(scope, receive, observed_send)
                finally:
                    fields: dict[str, Any] = {"method": scope.get("method")}
                    route = scope.get("path_template")
                    if route:
                        fields["route"] = route
                    fields["status"] = status or 500
                    if clock is not None:
                        fields["duration_ms"] = round((clock.monotonic() - t0) * 1000, 3)
                    if trace_id is not None:
                        fields["trace_id"] = trace_id
                    log.info("request", extra=fields)
        finally:
            request_state.reset(token)

    @staticmethod
    def _correlation_id(scope: Scope) -> str:
        """The request's valid ``X-Correlation-Id``, or a new one written into its
        headers (an invalid one replaced), so the response echoes the id logged."""
        headers = list(scope["headers"])
        for i, (name, value) in enumerate(headers):
            if name == b"x-correlation-id":
                text = value.decode("latin-1")
                if _CORRELATION_RE.match(text):
                    return text
                cid = str(uuid.uuid4())
                scope["headers"] = [*headers[:i], (name, cid.encode()), *headers[i + 1:]]
                return cid
        cid = str(uuid.uuid4())
        scope["headers"] = [*headers, (b"x-correlation-id", cid.encode())]
        return cid

    @staticmethod
    def _name_span(scope: Scope) -> str | None:
        """Name the routed request's span; its trace id (hex) for the access line."""
        span: Span | None = scope.get(_SPAN_KEY)  # type: ignore[assignment]
        if span is None or not span.is_recording():
            return None
        route = scope.get("path_template")
        if route:
            span.update_name(f"{scope.get('method', 'HTTP')} {route}")
            span.set_attribute("http.route", route)
        return format(span.get_span_context().trace_id, "032x")


class _KeepStructuredLogs(InitPlugin):
    """Leaves the process's logging alone once :func:`~orchestratord.logs.configure_logging`
    set it up: Litestar's default logging config would replace the root handler."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Drop Litestar's logging config when the structured handler is installed
        (OBS-8020)."""
        if structured_logging_configured():
            app_config.logging_config = None
        return app_config


def observability_plugins() -> list[InitPlugin]:
    """The one line ``create_app`` adds (OBS-8000, OBS-8021): Litestar's OpenTelemetry
    plugin with :class:`ObservedRequests` as its middleware, and the structured logs kept.
    ASGI ``send``/``receive`` events get no spans of their own (an SSE stream would make
    one per frame)."""
    config = OpenTelemetryConfig(
        middleware_class=ObservedRequests,
        scope_span_details_extractor=_span_details,
        server_request_hook_handler=_server_request_hook,
        exclude_spans=["receive", "send"],
    )
    plugin = OpenTelemetryPlugin(config)
    # The plugin's ``middleware`` property ignores ``config.middleware_class`` (Litestar
    # 2.25); Litestar's own shim sets ``_middleware`` the same way for a middleware
    # passed in ``middleware=``.
    plugin._middleware = config.middleware
    return [plugin, _KeepStructuredLogs()]
