"""Three real ``orchestratord serve --store DSN`` processes over one throwaway PostgreSQL
cluster (PG-9103..PG-9106).

The servers serve the mock engine at 20 tokens/s (60 tokens a Step, so a Step runs about
3 s), heartbeat every 200 ms and hold a 600 ms lease, all on one schema. A reader on one
process receives the Step another executes; a ``client_token`` sent to two processes at
once is one Step; after ``kill -9`` of the process running a Step, a survivor ends it as
``INTERRUPTED`` exactly once, within the lease.
"""

from __future__ import annotations

import os
import signal
import subprocess
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

pytestmark = pytest.mark.sqlite_only  # starts its own cluster and servers

SCHEMA = "multi_e2e"
LEASE_MS = 600
HEARTBEAT_MS = 200


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[str, list[tuple[subprocess.Popen[bytes], str]]]]:
    """``(dsn, [(process, base_url)] * 3)``: three servers on one schema of one cluster."""
    cfg = mock_config(mock_options={"tokens_per_s": 20, "length": 60},
                      store_heartbeat_ms=HEARTBEAT_MS, store_lease_ms=LEASE_MS)
    with pg_support.servers_on_one_schema(3, cfg, SCHEMA, "orch-pgm") as running:
        yield running


def _new_run(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"multi": True}}).json()
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


class TestSeveralServers:
    """Any process serves any stream; one token, one Step; a dead process's Steps end."""

    def test_a_reader_on_b_receives_the_tokens_of_a_step_a_executes(
            self, servers: tuple[str, list[tuple[subprocess.Popen[bytes], str]]]) -> None:
        """[PG-9103] A reader attached to process B while A runs the Step gets every
        frame, woken by A's commits, the same frames a reader on A gets, ending at
        ``end``."""
        _dsn, procs = servers
        (_pa, a), (_pb, b) = procs[0], procs[1]
        run_id = _new_run(a)
        step = _submit(a, run_id, llm_step("reader-b", prompt="multi reader"))
        on_b = _stream(b, step["step_id"])
        on_a = _stream(a, step["step_id"])
        tokens = [f for f in on_b if f["event"] == "token"]
        assert (on_b == on_a, on_b[0]["event"], on_b[-1]["event"], len(tokens),
                [f["id"] for f in on_b]) == (True, "started", "end", 60,
                                             list(range(len(on_b))))

    def test_one_client_token_sent_to_two_processes_at_once_is_one_step(
            self, servers: tuple[str, list[tuple[subprocess.Popen[bytes], str]]]) -> None:
        """[PG-9104] The same body with one ``client_token``, posted to A and to B at the
        same moment, answers the same ``step_id`` from both; one row holds the token."""
        dsn, procs = servers
        a, b = procs[0][1], procs[1][1]
        run_id = _new_run(a)
        body = llm_step("raced-token", prompt="raced")
        got: dict[str, str] = {}
        gate = threading.Barrier(2)

        def post(url: str) -> None:
            gate.wait()
            got[url] = _submit(url, run_id, body)["step_id"]

        threads = [threading.Thread(target=post, args=(u,)) for u in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = _sql(dsn, "SELECT count(*) FROM steps WHERE run_id = %s AND client_token = %s",
                    run_id, "raced-token")
        assert (got[a] == got[b], rows) == (True, [(1,)])

    def test_eight_steps_through_three_processes_never_overshoot_a_run_budget(
            self, servers: tuple[str, list[tuple[subprocess.Popen[bytes], str]]]) -> None:
        """[PG-9106] Eight concurrent Steps of one Run (``max_tokens`` 30 each) through
        three processes, against a Run budget of 100 output tokens: the reservations of
        all processes add up to at most the budget, so the Run's usage ends at or below
        100 and the Steps refused are refused with ``BUDGET_EXCEEDED``."""
        dsn, procs = servers
        urls = [url for _proc, url in procs]
        with httpx.Client(base_url=urls[0], timeout=30.0) as http:
            flow = http.post("/v1/flows", json={"ast_ir": {"budget": True}}).json()
            run_id = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={
                "seed": 7, "budgets": {"max_tokens_out": 100}}).json()["run_id"]
        answers: list[tuple[int, str]] = []
        gate = threading.Barrier(8)

        def post(i: int) -> None:
            body = llm_step(f"budget-{i}", prompt=f"budget {i}", max_tokens=30)
            with httpx.Client(base_url=urls[i % 3], timeout=30.0) as http:
                gate.wait()
                resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
                if resp.status_code in (200, 201):
                    answers.append((resp.status_code, resp.json()["step_id"]))
                else:
                    answers.append((resp.status_code, resp.json()["code"]))

        threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for code, step_id in answers:
            if code in (200, 201):
                _stream(urls[0], step_id)
        used = _sql(dsn, "SELECT COALESCE(SUM(tokens_out), 0) FROM steps WHERE run_id = %s",
                    run_id)[0][0]
        refused = {v for c, v in answers if c not in (200, 201)}
        assert (len(answers), used <= 100, refused <= {"BUDGET_EXCEEDED"},
                _sql(dsn, "SELECT count(*) FROM reservations WHERE run_id = %s", run_id)) == (
            8, True, True, [(0,)])

    def test_kill_9_of_a_ends_its_running_step_interrupted_once_within_the_lease(
            self, servers: tuple[str, list[tuple[subprocess.Popen[bytes], str]]]) -> None:
        """[PG-9105] A reader on B of a Step A runs receives, after ``kill -9`` of A, one
        ``error`` frame ``INTERRUPTED`` within the lease plus two heartbeats (and some
        slack for a busy machine); the log holds exactly one terminal frame and the Step
        is ``interrupted``, owned by the survivor that adopted it."""
        dsn, procs = servers
        pa, a = procs[2]
        b = procs[0][1]
        run_id = _new_run(a)
        step_id = _submit(a, run_id, llm_step("killed", prompt="killed"))["step_id"]
        frames: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: frames.extend(_stream(b, step_id)))
        reader.start()
        time.sleep(1.0)
        os.kill(pa.pid, signal.SIGKILL)
        pa.wait()
        killed_at = time.monotonic()
        reader.join(timeout=30)
        ended_after = time.monotonic() - killed_at
        status = _sql(dsn, "SELECT status, owner IN (SELECT process_id FROM processes)"
                           " FROM steps WHERE step_id = %s", step_id)
        again = _stream(procs[1][1], step_id)
        terminal = [f["event"] for f in again if f["event"] in ("end", "error")]
        last = frames[-1] if frames else {}
        assert (reader.is_alive(), last.get("event"), msgspec.json.decode(
            last.get("data", "{}")).get("code"), status, terminal, again == frames) == (
            False, "error", "INTERRUPTED", [("interrupted", True)], ["error"], True)
        assert ended_after < (LEASE_MS + 2 * HEARTBEAT_MS) / 1000 + 3.0
