"""Shared helpers for the test suites: in-process apps, server processes, SSE parsing,
fake-clock waits."""

from __future__ import annotations

import pathlib
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
from litestar.testing import TestClient

from orchestrator_core.clock import Clock
from orchestrator_core.config import ServerConfig
from orchestrator_core.frame_rows import expand
from orchestrator_core.metrics import Metrics
from orchestratord.app import create_app
from test_harness.store_param import counts, on_postgres, schema_for, test_dsn, with_test_store
from tools.servers import start_server, stop_server
from worker_adapters.registry import MockFactory, default_drivers

MOCK_MODEL = "mock:echo-1"
REAL_MODEL = "hf:HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"

TICK = 2.0 ** -10
"""Just under a millisecond, exact in binary floating point: a fake-clock test advances
by ``t - TICK`` and then ``TICK`` and lands on ``t`` exactly."""


async def until(predicate: Callable[[], bool]) -> None:
    """Yield to other tasks until ``predicate()`` holds (bound it with ``fail_after``)."""
    while not predicate():
        await anyio.lowlevel.checkpoint()


async def settle(passes: int = 50) -> None:
    """Let woken tasks run for a few scheduler passes, too short for a real timer to fire:
    what a fake-clock test does before asserting that something did not happen."""
    for _ in range(passes):
        await anyio.lowlevel.checkpoint()


@contextmanager
def app_client(config: ServerConfig, engine_factory: MockFactory | None = None,
               metrics: Metrics | None = None,
               clock: Clock | None = None) -> Iterator[TestClient[Any]]:
    """An in-process app (real Litestar, real SQLite, mock engine) with its lifespan;
    ``engine_factory`` replaces the mock driver's adapters (scripted tokens, faults);
    ``clock`` (e.g. a ``FakeClock``, advanced through ``client.blocking_portal``) is the
    time every server timer runs on."""
    app = create_app(config, drivers=default_drivers(mock_factory=engine_factory),
                     metrics_registry=metrics, clock=clock)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        yield client


@contextmanager
def server_process(config: ServerConfig,
                   data_dir: pathlib.Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real ``orchestratord serve`` process (Granian) with a config file in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = data_dir / "config.json"
    on_store = with_test_store(msgspec.structs.replace(config, data_dir=str(data_dir)))
    cfg_path.write_bytes(msgspec.json.encode(on_store))  # PG-9053
    proc, url = start_server(data_dir=str(data_dir), extra=["--config", str(cfg_path)])
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            stop_server(proc)


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Split an SSE body into frames ``{"id", "event", "data"}`` (comments skipped)."""
    frames = []
    for block in raw.decode().split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        frame: dict[str, Any] = {"id": None}
        for line in block.split("\n"):
            key, _, value = line.partition(": ")
            frame[key] = value
        frame["id"] = int(frame["id"]) if frame["id"] is not None else None
        frames.append(frame)
    return frames


def llm_step(token: str, prompt: str = "hello world", model: str = MOCK_MODEL,
             **params: Any) -> dict[str, Any]:
    """An ``llm_call`` submission body."""
    body: dict[str, Any] = {"type": "llm_call", "client_token": token,
                            "input": {"model": model, "prompt": prompt}}
    if params:
        body["input"]["params"] = params
    return body


def table_counts(db: pathlib.Path) -> dict[str, int]:
    """Row counts of the first three tables and, under ``events``, the frames the event
    log holds (a packed row holds several, STREAM-2011), read through a separate
    connection: to the SQLite file ``db``, or on the PostgreSQL pass to the schema of the
    server whose data dir holds ``db`` (PG-9053)."""
    tables = ("flows", "runs", "steps")
    if on_postgres():
        import psycopg

        with psycopg.connect(test_dsn()) as pg:
            pg.execute(f"SET search_path TO {schema_for(db.parent)}")
            return counts(pg, tables)
    con = sqlite3.connect(db)
    try:
        return counts(con, tables)
    finally:
        con.close()


def rewrite_frames(db: sqlite3.Connection, step_id: str,
                   change: Callable[[int, str, bytes], bytes]) -> None:
    """Rewrite a Step's stored frames as an older server (or an attacker) would leave
    them: one row per frame, each frame's data replaced by ``change(seq, type, data)``;
    the caller commits. Packed rows (STREAM-2011) are unpacked."""
    rows = db.execute("SELECT seq, type, data, last_seq, run_id FROM events"
                      " WHERE step_id = ? ORDER BY seq", (step_id,)).fetchall()
    frames = expand([r[:4] for r in rows], -1, len(rows) * 100_000)
    db.execute("DELETE FROM events WHERE step_id = ?", (step_id,))
    db.executemany("INSERT INTO events (step_id, seq, run_id, type, data)"
                   " VALUES (?, ?, ?, ?, ?)",
                   [(step_id, seq, rows[0][4], t, change(seq, t, d)) for seq, t, d in frames])


def http_run_step(http: Any, run_id: str, body: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Submit a step over real HTTP and read its SSE stream to the terminal frame.

    Returns:
        ``(submit response, durable frames)``; frames are empty when the submit failed.
    """
    resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
    if resp.status_code not in (200, 201):
        return resp, []
    with http.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
        raw = b"".join(s.iter_bytes())
    return resp, [f for f in parse_sse(raw) if f["id"] is not None]


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie or a missing process counts as dead)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def scripted_engine(answer: str | None) -> Any:
    """A mock engine that streams ``answer`` in 5-character tokens and finishes with
    ``stop`` (or ``length`` when ``max_tokens`` cuts it); ``None`` is the default seeded
    handler, which answers a ``json_schema`` request with a document of that schema."""
    from worker_adapters.base import CompletionRequest, Delta, Finish, StreamItem
    from worker_adapters.mock import MockEngine

    if answer is None:
        return MockEngine()

    async def handler(req: CompletionRequest) -> Any:
        pieces = [answer[k:k + 5] for k in range(0, len(answer), 5)]
        for i, piece in enumerate(pieces[:req.max_tokens]):
            item: StreamItem = Delta(text=piece, token_id=500 + i)
            yield item
        yield Finish(reason="length" if len(pieces) > req.max_tokens else "stop")

    return MockEngine(handler)


@contextmanager
def loopback_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server with ``handler`` on a free loopback port, for the block: its
    base URL (``http://127.0.0.1:<port>``); shut down and joined on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
