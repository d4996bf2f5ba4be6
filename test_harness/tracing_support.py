"""What the observability tests read: spans in memory and the log in a buffer.

The global tracer provider can be installed once per process (the API refuses a second
one), so it is installed once, with a gate: spans reach the in-memory exporter only
while a test holds :func:`recorded_spans`, and are dropped otherwise.
:func:`captured_logs` configures the process's logging for a block and restores it.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestratord.logs import LogFormat, configure_logging
from orchestratord.telemetry import instrument_http_clients

__all__ = ["LogCapture", "SpanTree", "captured_logs", "recorded_spans"]

_lock = threading.Lock()
_gate: _Gate | None = None


class _Gate(SpanProcessor):
    """Forwards finished spans to the exporter while open."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.inner = SimpleSpanProcessor(self.exporter)
        self.open = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Nothing to do when a span starts."""

    def on_end(self, span: ReadableSpan) -> None:
        """Export the span while the gate is open."""
        if self.open:
            self.inner.on_end(span)


def _installed() -> _Gate:
    global _gate
    with _lock:
        if _gate is None:
            _gate = _Gate()
            provider = TracerProvider()
            provider.add_span_processor(_gate)
            trace.set_tracer_provider(provider)
        return _gate


class SpanTree:
    """The spans a test recorded, by name and by parent."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def spans(self) -> list[ReadableSpan]:
        """Every finished span so far, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """The finished spans called ``name``."""
        return [s for s in self.spans if s.name == name]

    def wait_for(self, predicate: Callable[[SpanTree], bool], timeout_s: float = 10.0) -> None:
        """Wait until ``predicate`` holds (spans end in the server's thread).

        Raises:
            AssertionError: it did not hold within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched: {[s.name for s in self.spans]}")
            time.sleep(0.01)


@contextmanager
def recorded_spans(*, http_clients: bool = False) -> Iterator[SpanTree]:
    """Record the spans of the block in memory (the SDK installed once per process).

    Args:
        http_clients: also instrument httpx (client spans, ``traceparent`` injected) for
            the block.
    """
    gate = _installed()
    gate.exporter.clear()
    gate.open = True
    if http_clients:
        instrument_http_clients(trace.get_tracer_provider())
    try:
        yield SpanTree(gate.exporter)
    finally:
        gate.open = False
        if http_clients:
            instrument_http_clients(None)


_KNOBS = ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing")


class LogCapture:
    """The lines written while a block runs."""

    def __init__(self) -> None:
        self.buf = io.StringIO()

    @property
    def text(self) -> str:
        """Everything written so far."""
        return self.buf.getvalue()

    def records(self) -> list[dict[str, Any]]:
        """Every JSON line, decoded."""
        return [json.loads(line) for line in self.text.splitlines() if line.startswith("{")]

    def where(self, **fields: Any) -> list[dict[str, Any]]:
        """The records whose fields include ``fields``."""
        return [r for r in self.records() if all(r.get(k) == v for k, v in fields.items())]


@contextmanager
def captured_logs(fmt: LogFormat, secrets: Sequence[str] = (),
                  level: int = logging.INFO) -> Iterator[LogCapture]:
    """Configure the process's logging into a buffer for the block, at ``level``, then
    restore it.

    Create the app inside the block: its plugin keeps the structured handler only when
    it is installed first.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    litestar = logging.getLogger("litestar")
    saved_ls = (list(litestar.handlers), litestar.propagate)
    cap = LogCapture()
    knobs = {k: getattr(logging, k) for k in _KNOBS}  # configure_logging turns these off
    configure_logging(fmt, secrets=secrets, stream=cap.buf, level=level)
    try:
        yield cap
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        for k, v in knobs.items():
            setattr(logging, k, v)
        litestar.handlers[:] = saved_ls[0]
        litestar.propagate = saved_ls[1]
        structlog.reset_defaults()
