"""A ``replay`` Step serves its recording by reference (NERVE-4025, NERVE-4021, STREAM-2004).

The recording here is written straight into the store, with fixed ids and bytes, so the
replay's answers are known to the byte: its stream bodies were captured on the server
as it was when a replay copied every recorded frame into its own log, and must not
change now that it reads them from the recording.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from contracts.steps import StepSubmit
from orchestrator_core.canonical import b3, canonical_json
from orchestrator_core.config import ServerConfig
from orchestrator_core.rows import StepRow
from orchestrator_core.store import SqliteStore
from test_harness.support import app_client, llm_step

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
    store = SqliteStore(db)
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
                [(step_id, {"status": status, "tokens_in": 4,
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
PARAMS = {"max_tokens": 256, "min_p": 0.05, "repeat_penalty": 1, "seed": None, "stop": [],
          "temperature": 0, "top_k": 40, "top_p": 0.95}
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
                "replay_of_step": "stp_rec_ok"},
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
                "replay_of_step": "stp_rec_cut"},
        }
        run = client.get(f"/v1/runs/{rep}").json()
        assert {"usage": run["usage"], "steps": run["steps"]} == {
            "usage": {"tokens_in": 8, "tokens_out": 3, "wall_ms": 18, "cost_usd": 0.0},
            "steps": {"cancelled": 1, "succeeded": 1}}
