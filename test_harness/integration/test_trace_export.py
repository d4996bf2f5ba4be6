"""A real ``orchestratord serve`` process exports spans only when the ``OTEL_*`` variables
ask for it, and writes its log in the format its flag names (OBS-8000, OBS-8001,
OBS-8020)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from test_harness.support import loopback_http_server
from tools.servers import start_server, stop_server


def _serve(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
           env: dict[str, str]) -> tuple[str, pathlib.Path, object]:
    for key in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    proc, url = start_server(mock=True, data_dir=str(tmp_path),
                             extra=["--log-format", "json"])
    return url, tmp_path / "server.log", proc


@pytest.fixture
def served() -> Iterator[list[object]]:
    """Stops the servers a test started."""
    procs: list[object] = []
    yield procs
    for proc in procs:
        stop_server(proc)  # type: ignore[arg-type]


def _health(url: str) -> str:
    resp = httpx.get(url + "/health", headers={"X-Correlation-Id": "cid-export"})
    assert resp.status_code == 200
    return str(resp.headers["x-correlation-id"])


class TestConsoleExporter:
    """``OTEL_TRACES_EXPORTER=console`` prints each span as JSON on standard output."""

    def test_a_request_span_is_printed(self, tmp_path: pathlib.Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       served: list[object]) -> None:
        """[OBS-8000] [OBS-8021] The ``GET /health`` server span, with the service name
        from ``OTEL_SERVICE_NAME`` and its route, once the batch is flushed (50 ms); the
        request's access line names its trace."""
        url, log, proc = _serve(tmp_path, monkeypatch, {
            "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orch-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50"})
        served.append(proc)
        _health(url)
        deadline = time.monotonic() + 20
        while '"name": "GET /health"' not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        text = log.read_text(errors="replace")
        start = text.index('"name": "GET /health"')
        span = json.loads(text[text.rindex("\n{", 0, start) + 1:
                               text.index("\n}", start) + 2])
        assert (span["kind"], span["attributes"]["http.route"],
                span["attributes"]["http.status_code"],
                span["resource"]["attributes"]["service.name"]) == (
            "SpanKind.SERVER", "/health", 200, "orch-under-test")
        (access,) = [json.loads(ln) for ln in text.splitlines()
                     if ln.startswith("{") and '"cid-export"' in ln]
        assert access["trace_id"] == span["context"]["trace_id"].removeprefix("0x")


class TestNothingExported:
    """Without ``OTEL_TRACES_EXPORTER`` nothing is exported."""

    def test_no_span_is_printed_and_the_access_line_is_json(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
            served: list[object]) -> None:
        """[OBS-8001] [OBS-8020] No span anywhere in the output; the request's access
        line is one JSON object with its correlation id and no trace id."""
        url, log, proc = _serve(tmp_path, monkeypatch, {})
        served.append(proc)
        _health(url)
        deadline = time.monotonic() + 10
        while '"cid-export"' not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
        stop_server(proc)  # type: ignore[arg-type]
        served.clear()
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        (access,) = [r for r in lines if r.get("correlation_id") == "cid-export"]
        assert {k: access[k] for k in ("event", "method", "route", "status")} == {
            "event": "request", "method": "GET", "route": "/health", "status": 200}
        assert "trace_id" not in access
        assert '"span_id"' not in log.read_text() and '"context"' not in log.read_text()


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps each ``POST /v1/traces`` body and content type."""

    posts: ClassVar[list[tuple[str, str, bytes]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def do_POST(self) -> None:
        """Store the export request; answer 200 with an empty protobuf response."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.posts.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def collector() -> Iterator[str]:
    """A fake OTLP/HTTP collector on a free loopback port."""
    _Collector.posts = []
    with loopback_http_server(_Collector) as url:
        yield url


class TestOtlpExporter:
    """``OTEL_TRACES_EXPORTER=otlp`` posts the spans to ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    def test_the_request_span_reaches_the_collector(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
            served: list[object], collector: str) -> None:
        """[OBS-8000] A protobuf export to ``<endpoint>/v1/traces`` holding the
        ``GET /health`` server span of service ``orchestratord``."""
        url, _log, proc = _serve(tmp_path, monkeypatch, {
            "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
            "OTEL_BSP_SCHEDULE_DELAY": "50"})
        served.append(proc)
        _health(url)
        deadline = time.monotonic() + 20
        names: set[tuple[str, str]] = set()
        while ("orchestratord", "GET /health") not in names:
            assert time.monotonic() < deadline, names
            time.sleep(0.1)
            for path, ctype, body in list(_Collector.posts):
                assert (path, ctype) == ("/v1/traces", "application/x-protobuf")
                req = ExportTraceServiceRequest.FromString(body)
                for rs in req.resource_spans:
                    service = next(a.value.string_value for a in rs.resource.attributes
                                   if a.key == "service.name")
                    names |= {(service, s.name) for ss in rs.scope_spans for s in ss.spans}
