"""A real ``orchestratord serve`` process exports spans only when the ``OTEL_*`` variables
ask for it, and writes its log in the format its flag names (OBS-8000, OBS-8001,
OBS-8020)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator

import httpx
import pytest

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
