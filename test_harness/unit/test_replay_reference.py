"""A ``replay`` Step serves its recording by reference (NERVE-4025, NERVE-4021, STREAM-2004).

The recording here is written straight into the store, with fixed ids and bytes, so the
replay's answers are known to the byte: its stream bodies were captured on the server
as it was when a replay copied every recorded frame into its own log, and must not
change now that it reads them from the recording.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from contracts.steps import StepSubmit
from orchestrator_core.canonical import b3, b3_bytes, canonical_json
from orchestrator_core.config import ServerConfig
from orchestrator_core.replay import frames_hash
from orchestrator_core.rows import StepRow
from orchestrator_core.store import SqliteStore
from test_harness.store_param import open_test_store
from test_harness.support import app_client, llm_step, rewrite_frames, table_counts

PROV_OK = (b'{"seed":11,"prompt_hash":"b3:p","params_hash":"b3:q","engine":"mock",'
           b'"engine_version":"mock 1","model_hash":"sha256:m","pool_id":"mock-0",'
           b'"replica_id":"mock-0-r0","tokens_in":4,"tokens_out":2,"cost_usd":0.0,'
           b'"decode_time_ms":3,"finish_reason":"stop","policy_hash":"b3:pol",'
           b'"price_table_version":"v1"}')
PROV_CUT = PROV_OK.replace(b'"tokens_out":2', b'"tokens_out":1').replace(
    b',"finish_reason":"stop"', b"")
ERR_CUT = b'{"code":"CANCELLED","message":"step cancelled","retriable":false}'
RECORDED: dict[str, tuple[str, str, list[tuple[str, bytes]]]] = {
    # client_token: (recorded step_id, status, frames)
    "c-ok": ("stp_rec_ok", "succeeded", [
        ("started", b'{"queue_position":0,"predicted_start_ms":0,"placement":{"strategy":'
                    b'"auto","pool_id":"mock-0","replica_id":"mock-0-r0","reason":"least'
                    b' loaded"},"redactions":0}'),
        ("token", b'{"i":0,"t":"Hel","id":101,"b":"SGVs"}'),
        ("token", b'{"i":1,"t":"lo","id":102,"b":"bG8="}'),
        ("fact", b'{"fact_id":"fct_1","type":"note","data":{"x":1}}'),
        ("escalation", b'{"kind":"breaker","target":"mock-0-r0","from_state":"closed",'
                       b'"to_state":"open","failures":3,"reason":"engine errors"}'),
        ("end", b'{"provenance":' + PROV_OK + b',"output":{"text":"Hello"}}'),
    ]),
    "c-cut": ("stp_rec_cut", "cancelled", [
        ("started", b'{"queue_position":1,"predicted_start_ms":5,"placement":{"strategy":'
                    b'"auto","pool_id":"mock-0","replica_id":"mock-0-r0","reason":"least'
                    b' loaded"},"redactions":0}'),
        ("token", b'{"i":0,"t":"\xc3\xa9","id":7,"b":"w6k="}'),
        ("error", ERR_CUT[:-1] + b',"provenance":' + PROV_CUT + b"}"),
    ]),
}
PROMPTS = {"c-ok": "say hello", "c-cut": "say something else"}


def _input_hash(body: dict[str, Any]) -> str:
    sub = msgspec.convert(body, StepSubmit)
    return b3({"type": body["type"], "input": msgspec.to_builtins(sub.input)})


def seed_recording(db: pathlib.Path, run_id: str) -> None:
    """Write the recorded Steps of :data:`RECORDED` (finished, with their logs) into the
    record Run ``run_id`` of a stopped server's store."""
    store = open_test_store(db.parent)  # the SQLite file, or its schema (PG-9053)
    try:
        for token, (step_id, status, frames) in RECORDED.items():
            body = llm_step(token, PROMPTS[token])
            prov = PROV_OK if status == "succeeded" else PROV_CUT
            store.insert_step(StepRow(
                step_id=step_id, run_id=run_id, type="llm_call", client_token=token,
                input=canonical_json(body["input"]).decode(), input_hash=_input_hash(body),
                placement=None, status="queued", seed=11, created_at="2026-01-01T00:00:00Z"))
            store.commit_events(
                [(step_id, seq, run_id, t, d) for seq, (t, d) in enumerate(frames)],
                [(step_id, {"status": status, "last_seq": len(frames) - 1, "tokens_in": 4,
                            "tokens_out": msgspec.json.decode(prov)["tokens_out"],
                            "cost_usd": 0.0, "wall_ms": 9, "provenance": prov.decode(),
                            "error": ERR_CUT.decode() if status == "cancelled" else None})])
    finally:
        store.close()


class Replayed(msgspec.Struct):
    """What a client sees of one replayed Step."""

    body: bytes
    resumed: bytes
    step: dict[str, Any]


@pytest.fixture
def recorded(mock_cfg: ServerConfig) -> Iterator[tuple[TestClient[Any], str]]:
    """A server whose record Run holds the Steps of :data:`RECORDED`: ``(client, run_id)``."""
    with app_client(mock_cfg) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {"replay": "by reference"}}).json()
        run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
            "run_id"]
    seed_recording(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db", run_id)
    with app_client(mock_cfg) as client:
        yield client, run_id


def replay(client: TestClient[Any], run_id: str) -> tuple[str, dict[str, Replayed]]:
    """Replay the recording, read each Step's stream whole and from ``Last-Event-ID: 1``."""
    run = client.get(f"/v1/runs/{run_id}").json()
    rep = client.post(f"/v1/flows/{run['flow_id']}/runs",
                      json={"mode": "replay", "replay_of": run_id, "seed": 7}).json()["run_id"]
    out = {}
    for token in RECORDED:
        resp = client.post(f"/v1/runs/{rep}/steps", json=llm_step(token, PROMPTS[token]))
        assert resp.status_code == 201, resp.text
        step_id = resp.json()["step_id"]
        body = client.get(f"/v1/steps/{step_id}/stream").content
        resumed = client.get(f"/v1/steps/{step_id}/stream",
                             headers={"Last-Event-ID": "1"}).content
        out[token] = Replayed(body, resumed, client.get(f"/v1/steps/{step_id}").json())
    return rep, out


def _shown(step: dict[str, Any]) -> dict[str, Any]:
    """The Step resource without what differs per Step (its id, run and creation time)."""
    return {k: v for k, v in step.items() if k not in ("step_id", "run_id", "created_at")}


STARTED_OK = (b'id: 0\nevent: started\ndata: {"queue_position":0,"predicted_start_ms":0,'
              b'"placement":{"strategy":"auto","pool_id":"mock-0","replica_id":"mock-0-r0",'
              b'"reason":"least loaded"},"redactions":0}\n\n')
TOKEN_0_OK = b'id: 1\nevent: token\ndata: {"i":0,"t":"Hel","id":101,"b":"SGVs"}\n\n'
AFTER_1_OK = (
    b'id: 2\nevent: token\ndata: {"i":1,"t":"lo","id":102,"b":"bG8="}\n\n'
    b'id: 3\nevent: fact\ndata: {"fact_id":"fct_1","type":"note","data":{"x":1}}\n\n'
    b'id: 4\nevent: escalation\ndata: {"kind":"breaker","target":"mock-0-r0",'
    b'"from_state":"closed","to_state":"open","failures":3,"reason":"engine errors"}\n\n'
    b'id: 5\nevent: end\ndata: {"provenance":{"seed":11,"prompt_hash":"b3:p",'
    b'"params_hash":"b3:q","engine":"mock","engine_version":"mock 1","model_hash":'
    b'"sha256:m","pool_id":"mock-0","replica_id":"mock-0-r0","tokens_in":4,"tokens_out":2,'
    b'"cost_usd":0.0,"decode_time_ms":3,"finish_reason":"stop","policy_hash":"b3:pol",'
    b'"price_table_version":"v1"},"output":{"text":"Hello"}}\n\n')
STARTED_CUT = (b'id: 0\nevent: started\ndata: {"queue_position":1,"predicted_start_ms":5,'
               b'"placement":{"strategy":"auto","pool_id":"mock-0","replica_id":"mock-0-r0",'
               b'"reason":"least loaded"},"redactions":0}\n\n')
TOKEN_0_CUT = b'id: 1\nevent: token\ndata: {"i":0,"t":"\xc3\xa9","id":7,"b":"w6k="}\n\n'
AFTER_1_CUT = (
    b'id: 2\nevent: error\ndata: {"code":"CANCELLED","message":"step cancelled",'
    b'"retriable":false,"provenance":{"seed":11,"prompt_hash":"b3:p","params_hash":"b3:q",'
    b'"engine":"mock","engine_version":"mock 1","model_hash":"sha256:m","pool_id":"mock-0",'
    b'"replica_id":"mock-0-r0","tokens_in":4,"tokens_out":1,"cost_usd":0.0,'
    b'"decode_time_ms":3,"policy_hash":"b3:pol","price_table_version":"v1"}}\n\n')
PARAMS: dict[str, Any] = {"max_tokens": 256, "min_p": 0.05, "repeat_penalty": 1, "seed": None,
                          "stop": [], "temperature": 0, "top_k": 40, "top_p": 0.95}
PROVENANCE = {"seed": 11, "prompt_hash": "b3:p", "params_hash": "b3:q", "engine": "mock",
              "engine_version": "mock 1", "model_hash": "sha256:m", "pool_id": "mock-0",
              "replica_id": "mock-0-r0", "tokens_in": 4, "tokens_out": 2, "cost_usd": 0.0,
              "decode_time_ms": 3, "finish_reason": "stop", "policy_hash": "b3:pol",
              "price_table_version": "v1"}


class TestReplayStreamBytes:
    """A replay's answers are the ones a replay gave when it copied every recorded frame
    into its own log, captured on that server (NERVE-4021, STREAM-2004)."""

    def test_the_replayed_streams_are_the_bytes_a_copying_replay_sent(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] Each replayed Step's stream, whole and resumed after id 1, is the
        body a replay gave when it copied every recorded frame."""
        client, run_id = recorded
        _rep, got = replay(client, run_id)
        assert {t: (r.body, r.resumed) for t, r in got.items()} == {
            "c-ok": (STARTED_OK + TOKEN_0_OK + AFTER_1_OK, AFTER_1_OK),
            "c-cut": (STARTED_CUT + TOKEN_0_CUT + AFTER_1_CUT, AFTER_1_CUT),
        }

    def test_the_replayed_step_and_run_show_what_a_copying_replay_showed(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] The replayed Steps' resources (status, usage, provenance, error,
        last_seq, replay_of_step) and the replay Run's usage and counts are as before."""
        client, run_id = recorded
        rep, got = replay(client, run_id)
        assert {t: _shown(r.step) for t, r in got.items()} == {
            "c-ok": {
                "type": "llm_call", "client_token": "c-ok",
                "input": {"model": "mock:echo-1", "params": PARAMS, "prompt": "say hello"},
                "input_hash": "b3:47e5b5480d699532330b69fe89fc5fd0c30aba70c566699e70d208f23aa1d04c",
                "placement": None, "status": "succeeded", "seed": 11,
                "usage": {"tokens_in": 4, "tokens_out": 2, "wall_ms": 9, "cost_usd": 0.0},
                "last_seq": 5, "provenance": PROVENANCE, "error": None,
                "replay_of_step": "stp_rec_ok", "attempt": 0, "retry_of": None},
            "c-cut": {
                "type": "llm_call", "client_token": "c-cut",
                "input": {"model": "mock:echo-1", "params": PARAMS,
                          "prompt": "say something else"},
                "input_hash": "b3:6271d225c6f03c089de444013f733268e51c3df3fb7b5d78bc8657990c60d9fc",
                "placement": None, "status": "cancelled", "seed": 11,
                "usage": {"tokens_in": 4, "tokens_out": 1, "wall_ms": 9, "cost_usd": 0.0},
                "last_seq": 2,
                "provenance": {k: v for k, v in PROVENANCE.items() if k != "finish_reason"}
                | {"tokens_out": 1},
                "error": {"code": "CANCELLED", "message": "step cancelled",
                          "retriable": False},
                "replay_of_step": "stp_rec_cut", "attempt": 0, "retry_of": None},
        }
        run = client.get(f"/v1/runs/{rep}").json()
        assert {"usage": run["usage"], "steps": run["steps"]} == {
            "usage": {"tokens_in": 8, "tokens_out": 3, "wall_ms": 18, "cost_usd": 0.0},
            "steps": {"cancelled": 1, "succeeded": 1}}


def _orch_store(client: TestClient[Any]) -> SqliteStore:
    store: SqliteStore = client.app.state.orch.store
    return store


def _row(client: TestClient[Any], step_id: str) -> StepRow:
    row = _orch_store(client).get_step(step_id)
    assert row is not None
    return row


BODY_OK = STARTED_OK + TOKEN_0_OK + AFTER_1_OK
BODY_CUT = STARTED_CUT + TOKEN_0_CUT + AFTER_1_CUT


class TestServedByReference:
    """A Step that serves a recording is stored finished, by reference to the recording's
    content-hashed log, and appends nothing (NERVE-4025)."""

    def test_a_replay_step_is_answered_finished_and_adds_no_event_row(
            self, recorded: tuple[TestClient[Any], str], mock_cfg: ServerConfig) -> None:
        """[NERVE-4025] The submission answers with the recording's status and last_seq,
        a cancel then changes nothing, and the event log has the recording's 9 rows
        before and after."""
        client, run_id = recorded
        db = pathlib.Path(mock_cfg.data_dir) / "orchestrator.db"
        before = table_counts(db)["events"]
        flow_id = client.get(f"/v1/runs/{run_id}").json()["flow_id"]
        rep = client.post(f"/v1/flows/{flow_id}/runs",
                          json={"mode": "replay", "replay_of": run_id, "seed": 7}).json()
        answers = []
        for token in RECORDED:
            step = client.post(f"/v1/runs/{rep['run_id']}/steps",
                               json=llm_step(token, PROMPTS[token])).json()
            cancelled = client.post(f"/v1/steps/{step['step_id']}/cancel").json()
            body = client.get(f"/v1/steps/{step['step_id']}/stream").content
            answers.append((step["status"], step["last_seq"], cancelled["status"], body))
        assert (before, answers, table_counts(db)["events"]) == (
            9, [("succeeded", 5, "succeeded", BODY_OK), ("cancelled", 2, "cancelled", BODY_CUT)],
            9)

    def test_the_reference_names_the_recording_and_the_blake3_of_its_stream(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] Each replay Step's row names the recorded Step and the blake3 of
        the body a reader received, which the recorded Step keeps too and which
        ``frames_hash`` computes from its rows."""
        client, run_id = recorded
        _rep, got = replay(client, run_id)
        for token, r in got.items():
            rec_id = RECORDED[token][0]
            row, rec = _row(client, r.step["step_id"]), _row(client, rec_id)
            rows = _orch_store(client).read_events(rec_id, -1)
            assert (row.frames_of, row.replay_of_step, row.frames_hash, rec.frames_hash) == (
                rec_id, rec_id, b3_bytes(r.body), frames_hash(rows))
            assert r.body == (BODY_OK if token == "c-ok" else BODY_CUT)

    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    def test_a_recording_whose_frames_changed_after_its_hash_was_kept_is_refused(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] Once referenced, a recording whose bytes change is refused with 409
        CONFLICT naming the kept and the actual hash, and nothing is stored."""
        client, run_id = recorded
        replay(client, run_id)
        tampered = TOKEN_0_OK.replace(b'"Hel"', b'"Hex"')
        rewrite_frames(_orch_store(client)._conn, "stp_rec_ok", lambda seq, _t, d: (
            tampered.split(b"data: ")[1][:-2] if seq == 1 else d))
        flow_id = client.get(f"/v1/runs/{run_id}").json()["flow_id"]
        rep = client.post(f"/v1/flows/{flow_id}/runs",
                          json={"mode": "replay", "replay_of": run_id, "seed": 7}).json()
        resp = client.post(f"/v1/runs/{rep['run_id']}/steps", json=llm_step("c-ok", "say hello"))
        assert (resp.status_code, resp.json()) == (409, {
            "code": "CONFLICT",
            "message": "the recorded step's frames no longer match their content hash",
            "retriable": False,
            "data": {"recorded_step_id": "stp_rec_ok", "frames_hash": b3_bytes(BODY_OK),
                     "actual": b3_bytes(STARTED_OK + tampered + AFTER_1_OK)}})
        assert client.get(f"/v1/runs/{rep['run_id']}").json()["steps"] == {}

    def test_a_fork_of_a_fork_references_the_log_that_holds_the_frames(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] A Step inherited through two forks names the recorded Step whose
        rows hold the frames, never the reference between them, and streams its bytes."""
        client, run_id = recorded
        flow_id = client.get(f"/v1/runs/{run_id}").json()["flow_id"]
        parent, served = run_id, []
        for _fork in range(2):
            ckp = client.post(f"/v1/runs/{parent}/checkpoint",
                              json={"snapshot": {"at": parent}}).json()["checkpoint_id"]
            parent = client.post(f"/v1/flows/{flow_id}/runs",
                                 json={"from_checkpoint": ckp}).json()["run_id"]
            served.append(client.post(f"/v1/runs/{parent}/steps",
                                      json=llm_step("c-ok", "say hello")).json())
        rows = [_row(client, s["step_id"]) for s in served]
        assert [(r.replay_of_step, r.frames_of, r.status) for r in rows] == [
            ("stp_rec_ok", "stp_rec_ok", "succeeded"),
            (served[0]["step_id"], "stp_rec_ok", "succeeded")]
        assert client.get(f"/v1/steps/{served[1]['step_id']}/stream").content == BODY_OK

    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    def test_the_first_reference_keeps_the_hash_in_the_commit_that_stores_it(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] The first replay of a recording writes the hash kept on each
        recorded Step and the replay Step's row in one transaction, so a crash keeps both
        or neither; a second replay only inserts its rows."""
        client, run_id = recorded
        conn = _orch_store(client)._conn
        seen: list[str] = []
        conn.set_trace_callback(seen.append)
        try:
            replay(client, run_id)
            replay(client, run_id)
        finally:
            conn.set_trace_callback(None)
        names = {"BEGIN IMMEDIATE": "begin", "COMMIT": "commit",
                 "UPDATE steps SET frames_hash": "seal", "INSERT OR IGNORE INTO steps": "insert"}
        # the trace repeats a statement's text once more for each trigger it fires
        writes = [name for sql, _same in itertools.groupby(seen)
                  for start, name in names.items() if sql.startswith(start)]
        assert writes == ["begin", "seal", "insert", "commit"] * 2 + ["insert"] * 2

    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    def test_the_store_counts_a_broken_reference(
            self, recorded: tuple[TestClient[Any], str]) -> None:
        """[NERVE-4025] After a replay the integrity check is clean; a reference whose
        hash no longer matches the recording's is counted as broken."""
        client, run_id = recorded
        _rep, got = replay(client, run_id)
        store = _orch_store(client)
        clean = store.integrity()
        store._conn.execute("UPDATE steps SET frames_hash = 'b3:00' WHERE step_id = ?",
                            (got["c-cut"].step["step_id"],))
        assert (clean, store.integrity()) == (
            {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0, "broken_references": 0,
             "usage_mismatch": 0},
            {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0, "broken_references": 1,
             "usage_mismatch": 0})


class TestReferencesInTheStore:
    """The store reads a Step served by reference through the Step it names (NERVE-4025)."""

    def test_a_reference_reads_the_rows_of_the_step_it_names(self, store: SqliteStore) -> None:
        """[NERVE-4025] ``read_events`` and ``max_seq`` of a reference are those of the
        recorded Step; the reference itself owns no row."""
        frames = [("s", 0, "r", "started", b"{}"), ("s", 1, "r", "token", b'{"i":0}'),
                  ("s", 2, "r", "end", b"{}")]
        store.commit_events(frames, [("s", {"status": "succeeded", "last_seq": 2})])
        assert store.insert_step(StepRow(
            step_id="ref", run_id="r", type="llm_call", client_token="c2", input="{}",
            input_hash="i", placement=None, status="succeeded", seed=None, created_at="t",
            last_seq=2, replay_of_step="s", frames_of="s", frames_hash="b3:h"))
        assert (store.read_events("ref", 0), store.max_seq("ref"), store.max_seq("s")) == (
            [(1, "token", b'{"i":0}'), (2, "end", b"{}")], 2, 2)
        assert store._conn.execute(
            "SELECT COUNT(*) FROM events WHERE step_id = 'ref'").fetchone() == (0,)

    def test_a_reference_is_stored_only_with_the_hash_its_log_keeps(
            self, store: SqliteStore) -> None:
        """[NERVE-4025] ``insert_served`` keeps the reference's hash on the Step holding
        the frames and inserts the reference; when that Step keeps another hash it inserts
        nothing and returns the one kept."""
        def ref(token: str, digest: str) -> StepRow:
            return StepRow(step_id=f"ref-{token}", run_id="r", type="llm_call",
                           client_token=token, input="{}", input_hash="i", placement=None,
                           status="succeeded", seed=None, created_at="t", last_seq=-1,
                           replay_of_step="s", frames_of="s", frames_hash=digest)

        assert [store.insert_served(ref("c1", "b3:a"), "s"),
                store.insert_served(ref("c2", "b3:b"), "s"),
                store.insert_served(ref("c1", "b3:a"), "s")] == [
            (True, "b3:a"), (False, "b3:a"), (False, "b3:a")]
        assert [(r.step_id, r.frames_hash) for r in store.list_steps("r")] == [
            ("s", "b3:a"), ("ref-c1", "b3:a")]
