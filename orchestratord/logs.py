"""Structured logs: one JSON object or one logfmt line per event, through structlog
(OBS-8020..OBS-8025).

Every log line of the process, the standard-library loggers' included (the server's, the
core's, Litestar's), goes through one :class:`structlog.stdlib.ProcessorFormatter` on the
root logger, which adds:

* ``timestamp`` (ISO 8601, UTC), ``level``, ``logger`` and the ``event`` text;
* the request's ``correlation_id`` (its ``X-Correlation-Id``), ``tenant`` once the auth
  guard resolved it, and ``run_id`` / ``step_id`` in a Step's task (context variables;
  a Step's task inherits those of the request that admitted it);
* ``trace_id`` / ``span_id`` of the current span, when a span is recording;
* the fields a logger passes in ``extra`` (the Step transitions, the access log).

A last processor replaces every configured bearer token, and any ``Bearer <credential>``,
by ``[REDACTED]`` in every string field, the exception text included (OBS-8024).
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, Literal, TextIO

import re2
import structlog
from opentelemetry import trace

__all__ = ["LOG_FORMATS", "LogFormat", "configure_logging", "request_state",
           "structured_logging_configured"]

LogFormat = Literal["json", "logfmt"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "logfmt")
"""The values of ``--log-format`` (OBS-8020)."""

REDACTED = "[REDACTED]"
_BEARER = re2.compile(r"(?i)(bearer\s+)[^\s\"',;]+")
_HANDLER_NAME = "orchestratord-structured"

request_state: contextvars.ContextVar[MutableMapping[str, Any] | None] = \
    contextvars.ContextVar("orchestratord_request_state", default=None)
"""The ASGI ``scope["state"]`` of the request being served (or that admitted the Step
being run): the auth guard writes ``tenant`` there after the line that opens the request
was bound, so the tenant is read from it when each line is written."""

EventDict = MutableMapping[str, Any]


def _add_tenant(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """``tenant`` from the request's state, once the auth guard resolved it."""
    state = request_state.get()
    if state is not None and "tenant" not in event:
        tenant = state.get("tenant")
        if tenant is not None:
            event["tenant"] = tenant
    return event


def _add_trace_ids(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """``trace_id`` and ``span_id`` (hex) of the current recording span."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid and ctx.trace_flags.sampled:
        event["trace_id"] = format(ctx.trace_id, "032x")
        event["span_id"] = format(ctx.span_id, "016x")
    return event


class _Scrub:
    """Replace secrets in every string value of the event (OBS-8024).

    Args:
        secrets: strings that must never be written (the configured bearer tokens).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(r"\1" + REDACTED, text)
        return text

    def __call__(self, _logger: Any, _name: str, event: EventDict) -> EventDict:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self._clean(value)
        return event


def _traceback_below(_logger: Any, _name: str, event: EventDict) -> EventDict:
    """logfmt: the traceback goes on the lines after its record (as Python prints it),
    not into one quoted field, so it stays readable and greppable."""
    exc = event.pop("exception", None)
    if exc:
        event["_traceback"] = exc
    return event


class _LogfmtRenderer:
    """logfmt with ``timestamp level event`` first, and a traceback below the line."""

    def __init__(self) -> None:
        self.inner = structlog.processors.LogfmtRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True)

    def __call__(self, logger: Any, name: str, event: EventDict) -> str:
        tb = event.pop("_traceback", None)
        line = self.inner(logger, name, event)
        return f"{line}\n{tb.rstrip()}" if tb else line


def _processors() -> list[Any]:
    """What every record gets before it is rendered (structlog's and stdlib's alike)."""
    return [
        structlog.contextvars.merge_contextvars,
        _add_tenant,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _add_trace_ids,
    ]


def structured_logging_configured() -> bool:
    """Whether :func:`configure_logging` installed its handler on the root logger
    (OBS-8020)."""
    return any(h.get_name() == _HANDLER_NAME for h in logging.getLogger().handlers)


def configure_logging(fmt: LogFormat = "logfmt", *, level: int = logging.INFO,
                      secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Send every log record of the process through one structured formatter (OBS-8020).

    Idempotent: calling it again replaces the handler it installed (tests call it with
    their own stream). Litestar's own logger is routed to the same handler.

    Args:
        fmt: ``json`` (one object per line) or ``logfmt``.
        level: the root logger's level.
        secrets: strings never written, e.g. the configured bearer tokens (OBS-8024).
        stream: where lines go (default: standard error).

    Raises:
        ValueError: an unknown ``fmt``.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    # No line names its source file, thread or process: the logging HOWTO's optimisations
    # ("Optimization"), 5 to 7 µs a line here.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    scrub = _Scrub(secrets)
    final: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, scrub]
    if fmt == "json":
        final.append(structlog.processors.JSONRenderer(sort_keys=False))
    else:
        final += [_traceback_below, _LogfmtRenderer()]
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=_processors(),
                                                    processors=final)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request, with URLs
    litestar_log = logging.getLogger("litestar")
    for old in list(litestar_log.handlers):
        litestar_log.removeHandler(old)
    litestar_log.propagate = True
    structlog.configure(
        processors=[*_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
