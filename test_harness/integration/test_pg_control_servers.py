"""Control across real processes: a cancel sent to the process that does not run the
Step, a Run's close seen by a run stream on another process, and a server stopped past
its lease (SIGSTOP), whose Step a survivor adopted, resuming (SIGCONT) fenced, not broken
(PG-9108..PG-9113).

Two ``orchestratord serve --store DSN`` processes over one schema of a throwaway cluster,
two tenants (``alpha``, ``beta``), the mock engine at 20 tokens/s (60 tokens a Step,
about 3 s), a heartbeat every 200 ms, a 600 ms lease and SSE keep-alives every 10 s.
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

SCHEMA = "control_e2e"
LEASE_MS = 600
HEARTBEAT_MS = 200
KEEP_ALIVE_MS = 10_000
ALPHA = {"Authorization": "Bearer tok-alpha"}
BETA = {"Authorization": "Bearer tok-beta"}

Servers = tuple[str, list[tuple[subprocess.Popen[bytes], str]]]


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    """``(dsn, [(process, base_url)] * 2)``: two servers on one schema of one cluster."""
    cfg = mock_config(mock_options={"tokens_per_s": 20, "length": 60},
                      store_heartbeat_ms=HEARTBEAT_MS, store_lease_ms=LEASE_MS,
                      heartbeat_ms=KEEP_ALIVE_MS,
                      auth_tokens={"tok-alpha": "alpha", "tok-beta": "beta"})
    with pg_support.servers_on_one_schema(2, cfg, SCHEMA, "orch-pgf") as running:
        yield running


def _http(url: str, headers: dict[str, str] = ALPHA) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60.0, headers=headers)


def _new_run(url: str, headers: dict[str, str] = ALPHA) -> str:
    with _http(url, headers) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"control": True}}).json()
        return str(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
            "run_id"])


def _submit(url: str, run_id: str, body: dict[str, Any],
            headers: dict[str, str] = ALPHA) -> dict[str, Any]:
    with _http(url, headers) as http:
        resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
        assert resp.status_code in (200, 201), resp.text
        return dict(resp.json())


def _stream(url: str, step_id: str) -> list[dict[str, Any]]:
    with _http(url) as http, http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
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


def _cancel(url: str, step_id: str, headers: dict[str, str] = ALPHA) -> tuple[int, Any]:
    with _http(url, headers) as http:
        resp = http.post(f"/v1/steps/{step_id}/cancel")
        return resp.status_code, resp.json()


def _end_of(frames: list[dict[str, Any]]) -> tuple[str, str]:
    """The last frame's event and its error code ("" for none)."""
    data = msgspec.json.decode(frames[-1]["data"])
    return frames[-1]["event"], data.get("code", "") if isinstance(data, dict) else ""


class TestCancelThroughAnyProcess:
    """A cancel sent to B cancels the Step A runs, as a cancel sent to A does."""

    def test_a_step_a_runs_cancelled_through_b_ends_as_one_cancelled_through_a(
            self, servers: Servers) -> None:
        """[PG-9111] [PG-9112] B answers ``202 {"status": "cancelling"}`` for a Step A runs;
        the Step's log ends within a few seconds (its engine alone would take 3 s more)
        with one ``error`` frame ``CANCELLED``, the Step ``cancelled``: the same answer,
        frame and status as a Step cancelled through A."""
        dsn, procs = servers
        a, b = procs[0][1], procs[1][1]
        run_id = _new_run(a)
        answers, ends, took = [], [], []
        for via in (b, a):
            step_id = _submit(a, run_id, llm_step(f"cancel-via-{via[-5:]}",
                                                  prompt="cancelled"))["step_id"]
            frames: list[dict[str, Any]] = []
            reader = threading.Thread(target=lambda s=step_id, f=frames: f.extend(_stream(a, s)))
            reader.start()
            time.sleep(0.5)
            asked = time.monotonic()
            answers.append(_cancel(via, step_id))
            reader.join(timeout=30)
            took.append(time.monotonic() - asked)
            ends.append((_end_of(frames), sum(f["event"] in ("end", "error") for f in frames),
                         _sql(dsn, "SELECT status FROM steps WHERE step_id = %s", step_id)))
        assert (answers, ends) == (
            [(202, {"status": "cancelling"})] * 2,
            [(("error", "CANCELLED"), 1, [("cancelled",)])] * 2)
        assert max(took) < 2.0

    def test_another_tenants_step_cancelled_through_b_answers_like_an_unknown_id(
            self, servers: Servers) -> None:
        """[PG-9111] [PG-9112] Tenant beta cancelling, through B, a Step of tenant alpha
        that A runs gets the ``404`` of an unknown id (the same body but the id), and the
        Step runs on to its ``end``."""
        _dsn, procs = servers
        a, b = procs[0][1], procs[1][1]
        step_id = _submit(a, _new_run(a), llm_step("other-tenant", prompt="not yours"))[
            "step_id"]
        frames: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: frames.extend(_stream(a, step_id)))
        reader.start()
        theirs = _cancel(b, step_id, BETA)
        unknown = _cancel(b, "stp_unknown", BETA)
        reader.join(timeout=30)
        assert (theirs[0], msgspec.json.encode(theirs[1]).replace(step_id.encode(), b"ID"),
                _end_of(frames)) == (
            404, msgspec.json.encode(unknown[1]).replace(b"stp_unknown", b"ID"), ("end", ""))


class TestRunCloseAcrossProcesses:
    """A run stream on B sees a close made on A at once."""

    def test_a_run_stream_on_b_gets_run_end_promptly_after_a_close_on_a(
            self, servers: Servers) -> None:
        """[PG-9113] A run stream of an idle Run attached to B receives ``run_end`` within
        2 s of ``POST /v1/runs/{id}/close`` on A, well before its 10 s keep-alive."""
        _dsn, procs = servers
        a, b = procs[0][1], procs[1][1]
        run_id = _new_run(a)
        got: list[tuple[float, list[dict[str, Any]]]] = []

        def read() -> None:
            with _http(b) as http, http.stream("GET", f"/v1/runs/{run_id}/stream") as s:
                raw = b"".join(s.iter_bytes())
            got.append((time.monotonic(), parse_sse(raw)))

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(1.0)
        with _http(a) as http:
            closed = http.post(f"/v1/runs/{run_id}/close", json={"status": "completed"})
        at = time.monotonic()
        reader.join(timeout=30)
        events = [f["event"] for f in got[0][1]] if got else []
        assert (closed.status_code, events[-1:], got[0][0] - at < 2.0 if got else None) == (
            200, ["run_end"], True)


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
        with _http(a) as http:
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
