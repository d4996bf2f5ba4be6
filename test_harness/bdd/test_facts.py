"""Facts and gates (NERVE-4004, NERVE-4006)."""

from __future__ import annotations

import json
import pathlib
import threading
import time
import tracemalloc
from typing import Any

import httpx
from litestar.testing import TestClient
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import parse_sse, server_process

scenarios("facts.feature")

SCHEMA = "urn:demo:score"


@given(parsers.parse('a run of a flow declaring fact schema "{uri}" requiring a number '
                     '"{field}"'))
def run_with_schema(client: TestClient[Any], ctx: dict[str, Any], uri: str, field: str) -> None:
    """A Flow registering one fact schema."""
    flow = client.post("/v1/flows", json={"ast_ir": {"facts": 1}, "config": {
        "fact_schemas": {uri: {"type": "object", "required": [field],
                               "properties": {field: {"type": "number"}}}}}}).json()
    ctx.update(flow_id=flow["flow_id"], answers=[], n=0)
    ctx["run_id"] = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]


def _post(client: TestClient[Any], ctx: dict[str, Any], ftype: str, data: Any,
          uri: str = SCHEMA) -> Any:
    resp = client.post(f"/v1/runs/{ctx['run_id']}/facts",
                       json={"type": ftype, "schema_uri": uri, "data": data})
    ctx["answers"].append(resp)
    return resp


@when(parsers.parse('I post a fact of type "{ftype}" with {data}'))
def post_fact(client: TestClient[Any], ctx: dict[str, Any], ftype: str, data: str) -> None:
    """A fact with the flow's schema."""
    if data.endswith(" after 300 ms"):
        time.sleep(0.3)
        data = data.removesuffix(" after 300 ms")
        _post(client, ctx, ftype, json.loads(data), "urn:orchestratord:schema:any-object")
        return
    _post(client, ctx, ftype, json.loads(data))


@when(parsers.parse('I post a fact with schema_uri "{uri}"'))
def post_unregistered(client: TestClient[Any], ctx: dict[str, Any], uri: str) -> None:
    """An unknown schema."""
    _post(client, ctx, "x", {}, uri)


@then("the first answer is 201 with seq 0 and the second is 400 INVALID_PARAMS")
def first_ok(ctx: dict[str, Any]) -> None:
    """Validated on write."""
    a, b = ctx["answers"]
    assert (a.status_code, a.json()["seq"]) == (201, 0)
    assert (b.status_code, b.json()["code"]) == (400, "INVALID_PARAMS")
    assert b.json()["data"]["errors"][0]["path"] == "$.score"


@then(parsers.parse("the run has exactly {n:d} fact"))
def count(client: TestClient[Any], ctx: dict[str, Any], n: int) -> None:
    """Nothing partial stored."""
    assert len(client.get(f"/v1/runs/{ctx['run_id']}/facts").json()) == n


@when(parsers.parse('I post facts of types "{a}", "{b}", "{c}"'))
def post_three(client: TestClient[Any], ctx: dict[str, Any], a: str, b: str, c: str) -> None:
    """Three facts on the built-in schema."""
    for t in (a, b, c):
        _post(client, ctx, t, {"t": t}, "urn:orchestratord:schema:any-object")


@then(parsers.parse('filtering by type "{t}" gives seqs {x:d} and {y:d}'))
def by_type(client: TestClient[Any], ctx: dict[str, Any], t: str, x: int, y: int) -> None:
    """type filter."""
    facts = client.get(f"/v1/runs/{ctx['run_id']}/facts", params={"type": t}).json()
    assert [f["seq"] for f in facts] == [x, y]


@then(parsers.parse("since_seq {s:d} gives seqs {x:d} and {y:d}"))
def since(client: TestClient[Any], ctx: dict[str, Any], s: int, x: int, y: int) -> None:
    """since_seq filter."""
    facts = client.get(f"/v1/runs/{ctx['run_id']}/facts", params={"since_seq": s}).json()
    assert [f["seq"] for f in facts] == [x, y]


@then(parsers.parse("the flow's facts include all {n:d}"))
def flow_facts(client: TestClient[Any], ctx: dict[str, Any], n: int) -> None:
    """Flow-level query."""
    assert len(client.get(f"/v1/flows/{ctx['flow_id']}/facts").json()) == n


@when(parsers.parse("{w:d} writers post {k:d} facts each at once"))
def concurrent(client: TestClient[Any], ctx: dict[str, Any], w: int, k: int) -> None:
    """Threads posting through the same app."""
    errors: list[int] = []

    def writer(i: int) -> None:
        for j in range(k):
            r = client.post(f"/v1/runs/{ctx['run_id']}/facts", json={
                "type": "w", "schema_uri": "urn:orchestratord:schema:any-object",
                "data": {"writer": i, "n": j}})
            if r.status_code != 201:
                errors.append(r.status_code)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(w)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@then(parsers.parse("the run has {n:d} facts with seqs 0 to {last:d} and no duplicates"))
def total_order(client: TestClient[Any], ctx: dict[str, Any], n: int, last: int) -> None:
    """One total order, no gaps, every write present."""
    facts = client.get(f"/v1/runs/{ctx['run_id']}/facts", params={"limit": 10000}).json()
    assert [f["seq"] for f in facts] == list(range(last + 1))
    assert len({(f["data"]["writer"], f["data"]["n"]) for f in facts}) == n


@then(parsers.parse("on a Granian server, the fact stream from Last-Event-ID {last:d} starts "
                    "at seq {first:d}"))
def stream(mock_cfg: ServerConfig, tmp_path: pathlib.Path, last: int, first: int) -> None:
    """Facts posted before and while a reader follows the (never-ending) Run stream."""
    with server_process(mock_cfg, tmp_path / "srv") as (_p, url), \
            httpx.Client(base_url=url, timeout=10.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"s": 1}}).json()
        run_id = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
        body = {"type": "a", "schema_uri": "urn:orchestratord:schema:any-object", "data": {}}
        for _ in range(2):
            assert http.post(f"/v1/runs/{run_id}/facts", json=body).status_code == 201
        raw = b""
        with http.stream("GET", f"/v1/runs/{run_id}/facts/stream",
                         headers={"Last-Event-ID": str(last)}) as s:
            for chunk in s.iter_bytes():
                raw += chunk
                if b"id: 1\n" in raw and b"id: 2\n" not in raw:
                    assert http.post(f"/v1/runs/{run_id}/facts", json=body).status_code == 201
                if raw.count(b"event: fact") >= 2:
                    break
    assert [f["id"] for f in parse_sse(raw)] == [first, first + 1]


def _gate(client: TestClient[Any], ctx: dict[str, Any], expr: str, wait_ms: int = 0) -> None:
    ctx["n"] += 1
    ctx["gate_body"] = {"type": "gate_eval", "client_token": f"g-{ctx['n']}",
                        "input": {"expression": expr, "wait_ms": wait_ms}}
    step, raw = run_to_end(client, ctx["run_id"], ctx["gate_body"])
    ctx["gate_step"] = step["step_id"]
    ctx["gate"] = [f for f in parse_sse(raw) if f["id"] is not None]


@when(parsers.parse('I run gate_eval "{expr}" waiting {ms:d} ms'))
def gate_wait(client: TestClient[Any], ctx: dict[str, Any], expr: str, ms: int) -> None:
    """A gate with a deadline."""
    _gate(client, ctx, expr, ms)


@when(parsers.parse('I run gate_eval "{expr}"'))
def gate(client: TestClient[Any], ctx: dict[str, Any], expr: str) -> None:
    """A gate without waiting."""
    _gate(client, ctx, expr)


@when(parsers.parse('I start gate_eval "{expr}" waiting {ms:d} ms'))
def gate_background(client: TestClient[Any], ctx: dict[str, Any], expr: str, ms: int) -> None:
    """Submit, read the stream in a thread, let the scenario post the fact."""
    body = {"type": "gate_eval", "client_token": "g-wait",
            "input": {"expression": expr, "wait_ms": ms}}
    sid = client.post(f"/v1/runs/{ctx['run_id']}/steps", json=body).json()["step_id"]

    def read() -> None:
        with client.stream("GET", f"/v1/steps/{sid}/stream") as s:
            raw = b"".join(s.iter_bytes())
        ctx["gate"] = [f for f in parse_sse(raw) if f["id"] is not None]

    ctx["reader"] = threading.Thread(target=read)
    ctx["reader"].start()


@then(parsers.parse("the gate {outcome} and saw {n:d} fact"))
@then(parsers.parse("the gate {outcome} and saw {n:d} facts"))
def gate_outcome(ctx: dict[str, Any], outcome: str, n: int) -> None:
    """The recorded result."""
    if "reader" in ctx:
        ctx["reader"].join(10)
    end = json.loads(ctx["gate"][-1]["data"])
    assert ctx["gate"][-1]["event"] == "end"
    assert (end["output"]["passed"], len(end["output"]["facts_seen"])) == (
        outcome == "passed", n)


@when("I strict-replay that gate")
def strict_gate(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Same client_token in a strict_replay run."""
    run_id = client.post(f"/v1/flows/{ctx['flow_id']}/runs", json={
        "mode": "strict_replay", "replay_of": ctx["run_id"]}).json()["run_id"]
    _step, raw = run_to_end(client, run_id, ctx["gate_body"])
    ctx["replayed"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then("the replayed gate's end equals the recorded one")
def gate_equal(ctx: dict[str, Any]) -> None:
    """Re-evaluated over the recorded facts: same output."""
    rec = json.loads(ctx["gate"][-1]["data"])["output"]
    rep = json.loads(ctx["replayed"][-1]["data"])["output"]
    assert ctx["replayed"][-1]["event"] == "end"
    assert rep == rec and rec["value"] == 0.9


@when(parsers.parse('I submit gate_eval "{expr}"'))
def bad_gate(client: TestClient[Any], ctx: dict[str, Any], expr: str) -> None:
    """An expression that does not compile."""
    ctx["answers"].append(client.post(f"/v1/runs/{ctx['run_id']}/steps", json={
        "type": "gate_eval", "client_token": "bad", "input": {"expression": expr}}))


@when(parsers.parse('I try to declare fact schema "{uri}" whose "{field}" matches {pattern}'))
def declare_pattern(client: TestClient[Any], ctx: dict[str, Any], uri: str, field: str,
                    pattern: str) -> None:
    """A Flow whose fact schema constrains one string with a pattern (a JSON string)."""
    resp = client.post("/v1/flows", json={"ast_ir": {"facts": 2}, "config": {
        "fact_schemas": {uri: {"type": "object", "required": [field], "properties": {
            field: {"type": "string", "pattern": json.loads(pattern)}}}}}})
    ctx["answers"].append(resp)
    if resp.status_code in (200, 201):
        ctx["schema_uri"] = uri
        ctx["run_id"] = client.post(f"/v1/flows/{resp.json()['flow_id']}/runs",
                                    json={}).json()["run_id"]


@when(parsers.parse('I post a "{ftype}" fact whose "{field}" is {n:d} "a" followed by "!"'))
def post_hostile(client: TestClient[Any], ctx: dict[str, Any], ftype: str, field: str,
                 n: int) -> None:
    """The value that makes a backtracking engine explode."""
    _post(client, ctx, ftype, {field: "a" * n + "!"}, ctx["schema_uri"])

@when(parsers.parse('I run gate_eval "{start}" followed by {n:d} stages of "{stage}" '
                    'while tracing memory'))
def gate_traced(client: TestClient[Any], ctx: dict[str, Any], start: str, n: int,
                stage: str) -> None:
    """The probe's doubling expression, with Python's allocations traced meanwhile."""
    tracemalloc.start()
    try:
        _gate(client, ctx, start + stage * n)
        ctx["peak_bytes"] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@when(parsers.parse('I run gate_eval "{start}" followed by {n:d} stages of "{stage}" and '
                    '{m:d} stages of "{tail}"'))
def gate_stages(client: TestClient[Any], ctx: dict[str, Any], start: str, n: int, stage: str,
                m: int, tail: str) -> None:
    """A doubling expression followed by steps that would do the doubled work."""
    _gate(client, ctx, start + stage * n + tail * m)


@then(parsers.parse("the gate ends with OUTPUT_TOO_LARGE {data}"))
def gate_too_large(client: TestClient[Any], ctx: dict[str, Any], data: str) -> None:
    """[NERVE-4007] [POLICY-3030] A typed, non-retriable error frame names what was refused."""
    last = ctx["gate"][-1]
    env = json.loads(last["data"])
    assert (last["event"], env["code"], env["retriable"], env["data"]) == (
        "error", "OUTPUT_TOO_LARGE", False, json.loads(data))
    step = client.get(f"/v1/steps/{ctx['gate_step']}").json()
    assert (step["status"], step["error"]["code"]) == ("failed", "OUTPUT_TOO_LARGE")


@then(parsers.parse("no frame of the gate is larger than {limit:d} bytes"))
def gate_frames_small(client: TestClient[Any], ctx: dict[str, Any], limit: int) -> None:
    """What the store holds for the gate is small (read from the store, not the wire)."""
    rows = client.app.state.orch.store.read_events(ctx["gate_step"], -1)
    assert [t for _s, t, _d in rows] == ["started", "error"]
    assert max(len(d) for _s, _t, d in rows) <= limit


@then(parsers.parse("the server allocated less than {mb:d} MB while the gate ran"))
def gate_memory(ctx: dict[str, Any], mb: int) -> None:
    """Nothing of the doubled value was built: the traced peak stays small."""
    assert ctx["peak_bytes"] < mb << 20


@when(parsers.parse('I submit gate_eval "{prefix}" repeated {n:d} times, then "a", then '
                    '"{suffix}" repeated {m:d} times'))
def deep_gate(client: TestClient[Any], ctx: dict[str, Any], prefix: str, n: int, suffix: str,
              m: int) -> None:
    """A deeply nested expression (the parser and the evaluator recurse per level)."""
    ctx["answers"].append(client.post(f"/v1/runs/{ctx['run_id']}/steps", json={
        "type": "gate_eval", "client_token": "deep",
        "input": {"expression": prefix * n + "a" + suffix * m}}))


@when(parsers.parse('I submit gate_eval "{prefix}" repeated {n:d} times, then "a", then '
                    '"" repeated {m:d} times'))
def deep_gate_no_suffix(client: TestClient[Any], ctx: dict[str, Any], prefix: str, n: int,
                        m: int) -> None:
    """A deeply nested prefix expression."""
    deep_gate(client, ctx, prefix, n, "", m)


@then("the answer is 400 INVALID_PARAMS naming input.expression with limit_depth 64")
def deep_refused(ctx: dict[str, Any]) -> None:
    """[NERVE-4007] Refused at admission with the field named, never a 500."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        400, "INVALID_PARAMS", {"field": "input.expression", "limit_depth": 64})


@then("the run has no steps")
def no_steps(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Nothing was stored for the refused Step."""
    assert client.get(f"/v1/runs/{ctx['run_id']}").json()["steps"] == {}
