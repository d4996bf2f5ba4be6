"""Step streams (STREAM-2000, STREAM-2001, STREAM-2004, NERVE-4020)."""

from __future__ import annotations

import base64
import json
from typing import Any

from litestar.testing import TestClient
from pytest_bdd import scenarios, then, when

from test_harness.bdd.conftest import run_to_end
from test_harness.support import llm_step, parse_sse

scenarios("stream.feature")

PROVENANCE_FIELDS = {
    "seed", "prompt_hash", "params_hash", "engine", "engine_version", "engine_build",
    "model_hash", "pool_id", "replica_id", "tokens_in", "tokens_out", "cost_usd",
    "decode_time_ms", "finish_reason", "policy_hash", "price_table_version",
}


@when("I run an llm_call to completion")
def run_llm(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Submit and read the whole stream."""
    step, raw = run_to_end(client, ctx["run_id"], llm_step("s-1", "tell me a story"))
    ctx["step"], ctx["raw"] = step, raw
    ctx["frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then("the events are started, then only token frames, then end")
def order(ctx: dict[str, Any]) -> None:
    """started → token* → end."""
    events = [f["event"] for f in ctx["frames"]]
    assert events[0] == "started" and events[-1] == "end"
    assert set(events[1:-1]) == {"token"}


@then("every durable frame has an id equal to its position")
def ids(ctx: dict[str, Any]) -> None:
    """``id:`` is the sequence number."""
    assert [f["id"] for f in ctx["frames"]] == list(range(len(ctx["frames"])))


@then("the token indices are consecutive from 0")
def indices(ctx: dict[str, Any]) -> None:
    """Token ``i`` counts from 0 without holes."""
    tokens = [json.loads(f["data"]) for f in ctx["frames"] if f["event"] == "token"]
    assert [t["i"] for t in tokens] == list(range(len(tokens)))
    assert all(set(t) == {"i", "t", "id", "b"} for t in tokens)
    assert all(base64.b64decode(t["b"]) == t["t"].encode() for t in tokens)


@then("tokens_out in the end frame equals the number of token frames")
def tokens_out(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """The provenance count matches the stream, and the Step resource agrees."""
    end = json.loads(ctx["frames"][-1]["data"])
    n = sum(1 for f in ctx["frames"] if f["event"] == "token")
    assert end["provenance"]["tokens_out"] == n
    step = client.get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert (step["status"], step["usage"]["tokens_out"], step["last_seq"]) == (
        "succeeded", n, len(ctx["frames"]) - 1)


@then("the end frame carries every provenance field")
def provenance(ctx: dict[str, Any]) -> None:
    """DESIGN.md §4 provenance block, plus policy hash and price table version."""
    end = json.loads(ctx["frames"][-1]["data"])
    assert set(end["provenance"]) == PROVENANCE_FIELDS
    assert end["provenance"]["finish_reason"] in ("stop", "length")
    assert end["output"]["text"] == "".join(
        json.loads(f["data"])["t"] for f in ctx["frames"] if f["event"] == "token")


@then("reading the stream again returns identical bytes")
def reread(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A finished step's stream is its log, byte for byte."""
    with client.stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream") as s:
        again = b"".join(s.iter_bytes())
    durable = b"".join(
        block + b"\n\n" for block in ctx["raw"].split(b"\n\n") if block.startswith(b"id: "))
    assert again == durable


@then("reading with Last-Event-ID 3 returns exactly the frames after id 3")
def resume(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Resume after the given frame, no repeats and no holes."""
    with client.stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream",
                       headers={"Last-Event-ID": "3"}) as s:
        frames = parse_sse(b"".join(s.iter_bytes()))
    assert [f["id"] for f in frames] == [f["id"] for f in ctx["frames"][4:]]
    assert [f["data"] for f in frames] == [f["data"] for f in ctx["frames"][4:]]


@then("the stream response is text/event-stream with an X-Correlation-Id")
def headers(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """SSE headers."""
    with client.stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream") as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        assert s.headers["cache-control"] == "no-cache"
        assert len(s.headers["x-correlation-id"]) == 36
