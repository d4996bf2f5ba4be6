"""Fencing with real processes: a server stopped past its lease (SIGSTOP), whose Step a
survivor adopted, resumes (SIGCONT) fenced, not broken (PG-9108..PG-9110).

Two ``orchestratord serve --store DSN`` processes over one schema of a throwaway cluster,
the mock engine at 20 tokens/s (60 tokens a Step, about 3 s), a heartbeat every 200 ms and
a 600 ms lease.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from orchestrator_core.config import mock_config
from test_harness import pg_support
from test_harness.support import llm_step, parse_sse
from tools import pg_cluster
from tools.servers import start_server, stop_server

pytestmark = pytest.mark.sqlite_only  # starts its own cluster and servers

SCHEMA = "fence_e2e"
LEASE_MS = 600
HEARTBEAT_MS = 200

Servers = tuple[str, list[tuple[subprocess.Popen[bytes], str]]]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """``(dsn, [(process, base_url)] * 2)``: two servers on one schema of one cluster."""
    pg_support.require_binaries()
    base = pathlib.Path(tempfile.mkdtemp(prefix="orch-pgf-"))
    db = pathlib.Path(tempfile.mkdtemp(prefix="orch-pgf-db-"))  # the cluster user's own
    dsn = pg_cluster.start_cluster(db)
    cfg = mock_config(mock_options={"tokens_per_s": 20, "length": 60},
                      store_heartbeat_ms=HEARTBEAT_MS, store_lease_ms=LEASE_MS)
    path = base / "config.json"
    path.write_bytes(msgspec.json.encode(cfg))
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i in range(2):
            data = base / f"srv{i}"
            data.mkdir()
            procs.append(start_server(data_dir=str(data), extra=[
                "--config", str(path), "--store", dsn, "--store-schema", SCHEMA]))
        yield dsn, procs
    finally:
        for proc, _url in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                stop_server(proc)
        pg_cluster.stop_cluster(db)


def _new_run(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"fence": True}}).json()
        return str(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
            "run_id"])


def _submit(url: str, run_id: str, body: dict[str, Any]) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
        assert resp.status_code in (200, 201), resp.text
        return dict(resp.json())


def _stream(url: str, step_id: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=60.0) as http, \
            http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        raw = b"".join(s.iter_bytes())
    return [f for f in parse_sse(raw) if f["id"] is not None]


def _sql(dsn: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {SCHEMA}")
        return con.execute(query, args).fetchall()


def _until(check: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


class TestFencedProcess:
    """A process taken for dead while it ran writes nothing more for the Steps adopted."""

    def test_a_process_stopped_past_its_lease_resumes_fenced_and_serves_again(
            self, servers: Servers) -> None:
        """[PG-9108] [PG-9109] [PG-9110] A is stopped (SIGSTOP) while its Step streams,
        past its lease; B adopts the Step and ends it ``INTERRUPTED``; A resumes
        (SIGCONT): the Step's log holds exactly one terminal frame, the ``INTERRUPTED``,
        with no frame after it, A's own reader of the Step ends on that frame (read from
        the store), and A answers ``/ready`` and runs a new Step to its ``end``."""
        dsn, procs = servers
        (pa, a), (_pb, b) = procs
        run_id = _new_run(a)
        step_id = _submit(a, run_id, llm_step("fenced", prompt="fenced"))["step_id"]
        on_a: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: on_a.extend(_stream(a, step_id)))
        reader.start()
        time.sleep(1.0)
        os.kill(pa.pid, signal.SIGSTOP)
        try:
            adopted = _until(lambda: _sql(dsn, "SELECT status FROM steps WHERE step_id = %s",
                                          step_id) == [("interrupted",)], 15.0)
            time.sleep(0.5)
        finally:
            os.kill(pa.pid, signal.SIGCONT)
        reader.join(timeout=30)
        time.sleep(1.0)  # A's flusher and heartbeat have run after the resume
        on_b = _stream(b, step_id)
        terminal = [(f["id"], f["event"]) for f in on_b if f["event"] in ("end", "error")]
        last = on_b[-1]
        with httpx.Client(base_url=a, timeout=30.0) as http:
            ready = http.get("/ready").status_code
        again = _submit(a, _new_run(a), llm_step("after-resume", prompt="after resume"))
        after = _stream(a, again["step_id"])
        assert (adopted, reader.is_alive(), len(terminal), terminal[0][0] == last["id"],
                last["event"], msgspec.json.decode(last["data"])["code"], on_a == on_b,
                _sql(dsn, "SELECT status, last_seq = %s FROM steps WHERE step_id = %s",
                     last["id"], step_id),
                ready, after[-1]["event"]) == (
            True, False, 1, True, "error", "INTERRUPTED", True, [("interrupted", True)],
            200, "end")
