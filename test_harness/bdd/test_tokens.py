"""Token frames are engine tokens: ids, exact bytes, text, stop strings (STREAM-2006)."""

from __future__ import annotations

import base64
import json
import pathlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from pytest_bdd import given, scenarios, then, when

from orchestrator_core.config import mock_config
from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.support import app_client, llm_step, parse_sse, rewrite_frames

scenarios("tokens.feature")


@pytest.fixture
def split_client(tmp_path: pathlib.Path) -> Iterator[TestClient[Any]]:
    """An app whose mock engine splits multi-byte words over two tokens."""
    cfg = mock_config(data_dir=str(tmp_path / "data"), replicas=1, slots_per_replica=2,
                      mock_options={"utf8_split": True, "length": 15})
    with app_client(cfg) as client:
        yield client


def _tokens(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for f in parse_sse(raw) if f["event"] == "token"]


def _end(raw: bytes) -> dict[str, Any]:
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    assert frames[-1]["event"] == "end", frames[-1]
    return dict(json.loads(frames[-1]["data"]))


@given("a record run on a mock engine that splits characters over tokens")
def split_run(split_client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A fresh flow and a record-mode run."""
    ctx["client"] = split_client
    ctx["run_id"] = new_run(split_client)


@when("I run an llm_call of 15 tokens to completion")
def run_llm(ctx: dict[str, Any]) -> None:
    """The prompt is fixed, so the mock's words are too."""
    ctx["body"] = llm_step("tok-1", "tell me about café")
    _step, ctx["raw"] = run_to_end(ctx["client"], ctx["run_id"], ctx["body"])


@when("I strict-replay that step")
def strict(ctx: dict[str, Any]) -> None:
    """A strict_replay run of the recording, same client_token."""
    client = ctx["client"]
    flow_id = client.get(f"/v1/runs/{ctx['run_id']}").json()["flow_id"]
    run = client.post(f"/v1/flows/{flow_id}/runs", json={
        "mode": "strict_replay", "replay_of": ctx["run_id"]}).json()
    _step, ctx["replayed"] = run_to_end(client, run["run_id"], ctx["body"])


@when("I run it again with its fifth word as a stop string")
def run_with_stop(ctx: dict[str, Any]) -> None:
    """Stop at the fifth word, space included: the token that begins with it."""
    words = _end(ctx["raw"])["output"]["text"].split(" ")
    ctx["stop_word"] = " " + words[4]
    ctx["before"] = " ".join(words[:4])
    body = llm_step("tok-2", "tell me about café", stop=[ctx["stop_word"]])
    _step, ctx["stopped"] = run_to_end(ctx["client"], ctx["run_id"], body)


@then("some token frame ends inside a character and the next one completes it")
def split_frame(ctx: dict[str, Any]) -> None:
    """The split token's text stops before the character; the next token's text holds
    the whole character, the bytes of both tokens together."""
    toks = _tokens(ctx["raw"])
    data = [base64.b64decode(t["b"]) for t in toks]
    split = [k for k, d in enumerate(data) if d[-1:] >= b"\xc0"]
    assert split
    for k in split:
        assert toks[k]["t"] == data[k][:-1].decode()
        assert toks[k + 1]["t"] == (data[k][-1:] + data[k + 1]).decode()


@then("the concatenated token bytes decode to the step's output text")
def bytes_are_text(ctx: dict[str, Any]) -> None:
    """Bytes and text agree once every character is complete."""
    data = b"".join(base64.b64decode(t["b"]) for t in _tokens(ctx["raw"]))
    text = "".join(t["t"] for t in _tokens(ctx["raw"]))
    assert data.decode("utf-8") == text == _end(ctx["raw"])["output"]["text"]


@then("no token text holds U+FFFD")
def no_replacement(ctx: dict[str, Any]) -> None:
    """Nothing was lost or invented."""
    assert all("\ufffd" not in t["t"] for t in _tokens(ctx["raw"]))


@then("tokens_out equals the number of token frames")
def tokens_out(ctx: dict[str, Any]) -> None:
    """One frame per engine token: 15."""
    assert _end(ctx["raw"])["provenance"]["tokens_out"] == len(_tokens(ctx["raw"])) == 15


@then("the replayed token frames equal the recorded ones byte for byte")
def same_frames(ctx: dict[str, Any]) -> None:
    """Ids, bytes, text and indices."""
    recorded = [f["data"] for f in parse_sse(ctx["raw"]) if f["event"] == "token"]
    replayed = [f["data"] for f in parse_sse(ctx["replayed"]) if f["event"] == "token"]
    assert replayed == recorded and _end(ctx["replayed"])["output"] == \
        _end(ctx["raw"])["output"]


@then("the step ends with finish_reason stop")
def finish_stop(ctx: dict[str, Any]) -> None:
    """A stop string is a stop."""
    assert _end(ctx["stopped"])["provenance"]["finish_reason"] == "stop"


@then("the output is the text before that word")
def before_stop(ctx: dict[str, Any]) -> None:
    """No frame shows the stop string."""
    assert _end(ctx["stopped"])["output"]["text"] == ctx["before"]
    assert ctx["stop_word"] not in "".join(t["t"] for t in _tokens(ctx["stopped"]))


@then("tokens_out counts the withheld stop token beyond the token frames")
def withheld(ctx: dict[str, Any]) -> None:
    """The engine sampled it: it is paid for and counts against the budget."""
    frames = len(_tokens(ctx["stopped"]))
    assert _end(ctx["stopped"])["provenance"]["tokens_out"] == frames + 1


@pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
def test_a_recording_made_before_token_bytes_existed_replays_byte_for_byte(
        tmp_path: pathlib.Path) -> None:
    """Frames written by an older server (no ``b``, ``id`` -1, several tokens merged in
    one frame) still read, and ``replay`` serves them byte for byte (STREAM-2006)."""
    cfg = mock_config(data_dir=str(tmp_path / "data"), replicas=1,
                      mock_options={"utf8_split": True, "length": 15})
    body = llm_step("legacy-1", "tell me about café")
    with app_client(cfg) as client:
        run_id = new_run(client)
        step, _raw = run_to_end(client, run_id, body)
        flow_id = client.get(f"/v1/runs/{run_id}").json()["flow_id"]
    db = sqlite3.connect(tmp_path / "data" / "orchestrator.db")

    def legacy(_seq: int, ftype: str, data: bytes) -> bytes:  # as today's main wrote them
        if ftype != "token":
            return data
        tok = json.loads(data)
        return json.dumps({"i": tok["i"], "t": tok["t"], "id": -1},
                          ensure_ascii=False, separators=(",", ":")).encode()

    rewrite_frames(db, step["step_id"], legacy)
    db.commit()
    db.close()
    with app_client(cfg) as client:
        with client.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
            recorded = b"".join(s.iter_bytes())
        replay = client.post(f"/v1/flows/{flow_id}/runs", json={
            "mode": "replay", "replay_of": run_id}).json()
        _step, replayed = run_to_end(client, replay["run_id"], body)
    tokens = _tokens(recorded)
    assert len(tokens) == 15 and all(set(t) == {"i", "t", "id"} and t["id"] == -1
                                     for t in tokens)
    assert [f["data"] for f in parse_sse(replayed)] == [f["data"] for f in parse_sse(recorded)]
