"""What a replayed Step costs the server: the hash of a cached recording, the statements
of a served admission, and the fixed work of every Step answer (STREAM-2013..2016).

These pin the shape of the work (how many hashes, which store statements, whether a
task group runs), not times: the times are ``python -m tools.bench.replay``'s.
"""

from __future__ import annotations

import pathlib
import sqlite3
import types
from collections.abc import Callable, Iterator
from typing import Any

import blake3
import litestar._kwargs.kwargs_model as kwargs_model
import pytest
from litestar.testing import TestClient
from prometheus_client import CollectorRegistry

import orchestrator_core.canonical as canonical
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import ServerConfig
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store
from test_harness.store_param import on_postgres
from test_harness.support import app_client, llm_step
from tools.bench.replay import ReadbackRound, _report

SSE = {"accept": "text/event-stream"}


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every byte string the server hashes with blake3, in order."""
    seen: list[int] = []
    real = blake3.blake3

    def counting(data: bytes = b"") -> Any:
        seen.append(len(data))
        return real(data)

    monkeypatch.setattr(canonical, "blake3", types.SimpleNamespace(blake3=counting))
    return seen


@pytest.fixture
def served(mock_cfg: ServerConfig) -> Iterator[tuple[TestClient[Any], str, str]]:
    """A server whose record Run has finished Steps ``s-0`` and ``s-1`` (8 tokens each,
    still in the log's cache): ``(client, flow_id, run_id)``."""
    with app_client(mock_cfg) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {"replay": "costs"}}).json()["flow_id"]
        run = client.post(f"/v1/flows/{flow}/runs", json={"seed": 3}).json()["run_id"]
        for token in ("s-0", "s-1"):
            resp = client.post(f"/v1/runs/{run}/steps", headers=SSE,
                               json=llm_step(token, f"say {token}", max_tokens=8))
            assert resp.status_code == 201, resp.text
        yield client, flow, run


def _replay_run(client: TestClient[Any], flow_id: str, run_id: str) -> str:
    return str(client.post(f"/v1/flows/{flow_id}/runs", json={
        "mode": "replay", "replay_of": run_id, "seed": 3}).json()["run_id"])


def _store(client: TestClient[Any]) -> SqliteStore:
    store: SqliteStore = client.app.state.orch.store
    return store


def _record_calls(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every public store method called from now on."""
    calls: list[str] = []
    for name in [n for n in vars(Store) if not n.startswith("_")]:  # either backend
        method = getattr(store, name)
        if not callable(method):
            continue

        def wrapper(*args: Any, _name: str = name, _m: Callable[..., Any] = method,
                    **kwargs: Any) -> Any:
            calls.append(_name)
            return _m(*args, **kwargs)

        monkeypatch.setattr(store, name, wrapper)
    return calls


class TestSealedFrames:
    """The content hash of a finished log is computed once per cached copy of its bytes
    (STREAM-2013)."""

    @pytest.fixture
    def log(self, store: SqliteStore) -> EventLog:
        """An event log whose Step ``s`` has finished with three frames."""
        lg = EventLog(store, FakeClock(), Metrics(CollectorRegistry()))
        lg.open("s", "r")
        lg.append_recorded("s", "started", b"{}")
        lg.append_recorded("s", "token", b'{"i":0,"t":"a","id":1}')
        lg.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        return lg

    def test_a_cached_log_is_hashed_once_whatever_the_references(
            self, log: EventLog, hashed: list[int]) -> None:
        """[STREAM-2013] Three asks for the sealed log of a cached finished Step hash its
        107 bytes once and answer the same frames and hash each time."""
        body = (b"id: 0\nevent: started\ndata: {}\n\n"
                b'id: 1\nevent: token\ndata: {"i":0,"t":"a","id":1}\n\n'
                b"id: 2\nevent: end\ndata: {}\n\n")
        answers = [log.sealed_frames("s") for _ in range(3)]
        assert answers == [([body[:31], body[31:80], body[80:]],
                            "b3:" + blake3.blake3(body).hexdigest())] * 3
        assert hashed == [107]

    def test_a_log_read_from_the_store_is_hashed_on_every_ask(
            self, log: EventLog, hashed: list[int]) -> None:
        """[STREAM-2013] Once the cache no longer holds the Step, every ask reads its rows
        and hashes them again, so a changed row is seen by the next reference."""
        log._live.clear()
        first, second = log.sealed_frames("s"), log.sealed_frames("s")
        assert (first == second, hashed) == (True, [107, 107])

    def test_a_replay_of_a_cached_recording_hashes_it_once(
            self, served: tuple[TestClient[Any], str, str], hashed: list[int]) -> None:
        """[STREAM-2013] [NERVE-4025] Three replays of a recorded Step still in the cache
        hash its stream body once, and each replay streams that body unchanged."""
        client, flow_id, run_id = served
        step_id = client.post(f"/v1/runs/{run_id}/steps",
                              json=llm_step("s-0", "say s-0", max_tokens=8)).json()["step_id"]
        body = client.get(f"/v1/steps/{step_id}/stream").content
        hashed.clear()
        bodies = [client.post(f"/v1/runs/{_replay_run(client, flow_id, run_id)}/steps",
                              headers=SSE, json=llm_step("s-0", "say s-0", max_tokens=8)).content
                  for _ in range(3)]
        assert (bodies, [n for n in hashed if n == len(body)]) == ([body] * 3, [len(body)])


class TestServedAdmission:
    """A Step served by reference is admitted with a fixed set of store statements, and
    its row is committed before its answer (STREAM-2014)."""

    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    def test_a_replayed_step_reads_the_run_two_tokens_and_inserts_once(
            self, served: tuple[TestClient[Any], str, str], mock_cfg: ServerConfig,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """[STREAM-2014] Two replayed Steps of a recording already referenced cost, each:
        the Run, the token in the replay Run, the token in the recording and one insert;
        the first answer of the Run also reads it for its budget headers."""
        client, flow_id, run_id = served
        first = _replay_run(client, flow_id, run_id)
        for token in ("s-0", "s-1"):  # the first reference keeps the recording's hash
            client.post(f"/v1/runs/{first}/steps", json=llm_step(token, f"say {token}",
                                                                 max_tokens=8))
        rep = _replay_run(client, flow_id, run_id)
        calls = _record_calls(_store(client), monkeypatch)
        answers = [client.post(f"/v1/runs/{rep}/steps", json=llm_step(
            token, f"say {token}", max_tokens=8)) for token in ("s-0", "s-1")]
        assert [r.status_code for r in answers] == [201, 201]
        assert calls == ["get_run", "get_step_by_token", "get_step_by_token", "insert_step",
                         "get_run",
                         "get_run", "get_step_by_token", "get_step_by_token", "insert_step"]
        db = sqlite3.connect(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db")
        try:  # another connection sees both rows: they were committed before the answer
            rows = [db.execute("SELECT status, last_seq, frames_of IS NOT NULL FROM steps"
                               " WHERE step_id = ?", (r.json()["step_id"],)).fetchone()
                    for r in answers]
        finally:
            db.close()
        assert rows == [("succeeded", 9, 1), ("succeeded", 9, 1)]


class TestRecordAdmissionReads:
    """A record Step's admission reads the Run's usage only when a budget needs it, and
    never the Run's forks (NERVE-4042)."""

    @pytest.mark.parametrize(("budgets", "reads_usage"), [
        ({}, False), ({"max_wall_ms": 600_000}, False), ({"max_tokens_out": 10_000}, True)])
    def test_usage_is_read_for_a_token_or_cost_budget_only(
            self, served: tuple[TestClient[Any], str, str], budgets: dict[str, int],
            reads_usage: bool, monkeypatch: pytest.MonkeyPatch) -> None:
        """[NERVE-4042] Up to the Step's insert, ``run_usage`` is called for a Run with a
        token budget, not for a Run with none or with a wall-clock budget only, and
        ``child_runs`` never (the answer's budget headers read the Run afterwards)."""
        client, flow_id, _run_id = served
        run = client.post(f"/v1/flows/{flow_id}/runs", json={
            "seed": 3, "budgets": budgets}).json()["run_id"]
        calls = _record_calls(_store(client), monkeypatch)
        resp = client.post(f"/v1/runs/{run}/steps", json=llm_step("b-0", "say b", max_tokens=8))
        assert resp.status_code == 201, resp.text
        admission = calls[:calls.index("insert_step")]
        # on PostgreSQL the shared ledger reads the usage under the Run's lock (PG-9106)
        assert ("run_usage" in admission, "child_runs" in admission) == (
            reads_usage and not on_postgres(), False)


class TestStepAnswerFixedCosts:
    """Work every Step answer does whatever the Step: its dependencies and its budget
    headers (STREAM-2015)."""

    def test_dependencies_are_resolved_without_a_task_group(
            self, served: tuple[TestClient[Any], str, str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """[STREAM-2015] Submitting, reading and streaming a Step resolve ``orch`` and
        ``tenant`` inline: no anyio task group is created for them."""
        client, _flow_id, run_id = served
        groups: list[int] = []
        real = getattr(kwargs_model, "create_task_group")  # noqa: B009 (not re-exported)

        def counting() -> Any:
            groups.append(1)
            return real()

        monkeypatch.setattr(kwargs_model, "create_task_group", counting)
        step = client.post(f"/v1/runs/{run_id}/steps",
                           json=llm_step("s-0", "say s-0", max_tokens=8)).json()
        statuses = [client.get(f"/v1/steps/{step['step_id']}").status_code,
                    client.get(f"/v1/steps/{step['step_id']}/stream").status_code]
        assert (statuses, groups) == ([200, 200], [])

    def test_an_uncapped_run_is_read_once_for_its_budget_headers(
            self, served: tuple[TestClient[Any], str, str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        """[STREAM-2015] [POLICY-3000] A Run with no budgets answers ``{}`` three times
        and is read once; a capped Run is read for every answer, its remainder changing."""
        client, flow_id, _run_id = served
        uncapped, capped = (client.post(f"/v1/flows/{flow_id}/runs", json={
            "seed": 3, **budgets}).json()["run_id"]
            for budgets in ({}, {"budgets": {"max_tokens_out": 100}}))
        orch = client.app.state.orch
        calls = _record_calls(_store(client), monkeypatch)
        answers = [orch.budget_remaining(uncapped) for _ in range(3)]
        assert (answers, calls) == ([{}, {}, {}], ["get_run"])
        calls.clear()
        assert [orch.budget_remaining(capped) for _ in range(2)] == [
            {"tokens_out": 100.0}, {"tokens_out": 100.0}]
        assert calls.count("get_run") >= 2


class TestReplayBenchReport:
    """``python -m tools.bench.replay`` reports each client's medians and ratios
    (STREAM-2016)."""

    def test_the_report_takes_medians_and_ratios_per_client(self) -> None:
        """[STREAM-2016] Three rounds of 20 x 200 tokens give the medians of record,
        replay, read-back and the idempotent resubmission, replay / record, and the replay
        and resubmission shares of read-back."""
        rounds = [ReadbackRound(record_ms=r, replay_ms=p, readback_ms=b, record_cpu_ms=40.0,
                                replay_cpu_ms=8.0, readback_cpu_ms=6.0, replay_first=i % 2 == 0,
                                byte_identical=True, resubmit_ms=a)
                  for i, (r, p, b, a) in enumerate([(50.0, 10.0, 8.0, 9.0),
                                                    (60.0, 12.0, 9.0, 10.0),
                                                    (40.0, 11.0, 10.0, 12.0)])]
        r = _report("raw", 20, 200, 1, rounds)
        assert (r.client, r.record_ms, r.replay_ms, r.readback_ms, r.replay_over_record,
                r.replay_tokens_per_s, r.readback_tokens_per_s, r.replay_share_of_readback,
                r.replay_server_us_per_token, r.replay_over_record_server_cpu,
                r.byte_identical, r.resubmit_ms, r.resubmit_share_of_readback) == (
                    "raw", 50.0, 11.0, 9.0, 0.22, 363636.4, 444444.4, 0.8182, 2.0, 0.2, True,
                    10.0, 0.9)
