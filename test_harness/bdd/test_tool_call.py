"""tool_call (NERVE-4011, POLICY-3002): validation, execution, replay, breaker, policy."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import app_client, parse_sse
from worker_adapters.tools import ToolExecutorConfig, default_tool_executors

scenarios("tool_call.feature")

COUNT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}},
                "required": ["text"], "additionalProperties": False}


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


@given(parsers.parse('a flow declaring tool "{tool}" on executor "{executor}" and tool '
                     '"{bad}" on a failing executor'))
def flow(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], tool: str,
         executor: str, bad: str) -> None:
    """The built-in wc executor and one that always exits 3."""
    tools = {**default_tool_executors(), "fails": ToolExecutorConfig(
        kind="argv", argv=[sys.executable, "-c", "import sys; sys.exit(3)"])}
    cfg = msgspec.structs.replace(mock_cfg, tools=tools, breaker_failures=3,
                                  breaker_reset_ms=60_000)
    client = stack.enter_context(app_client(cfg))
    ctx.update(client=client, answers=[], n=0, streams=[])
    ctx["flow_id"] = client.post("/v1/flows", json={"ast_ir": {"t": 1}, "tools": [
        {"name": tool, "executor": executor, "parameters": COUNT_SCHEMA,
         "output_schema": {"type": "object", "required": ["words"]}},
        {"name": bad, "executor": "fails", "parameters": {"type": "object"}}]}).json()["flow_id"]
    ctx["run_id"] = client.post(f"/v1/flows/{ctx['flow_id']}/runs", json={}).json()["run_id"]


def _body(ctx: dict[str, Any], tool: str, args: Any) -> dict[str, Any]:
    ctx["n"] += 1
    return {"type": "tool_call", "client_token": f"t-{ctx['n']}",
            "input": {"tool": tool, "args": args}}


def _call(ctx: dict[str, Any], tool: str, args: Any) -> None:
    body = _body(ctx, tool, args)
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=body)
    ctx["answers"].append(resp)
    if resp.status_code == 201:
        ctx["body"] = body
        with ctx["client"].stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
            ctx["streams"].append([f for f in parse_sse(b"".join(s.iter_bytes()))
                                   if f["id"] is not None])


@when(parsers.parse('I call tool "{tool}" with {args}'))
def call(ctx: dict[str, Any], tool: str, args: str) -> None:
    """One tool_call."""
    _call(ctx, tool, json.loads(args))


@then(parsers.parse('the step ends with output {output} from "{executor}"'))
def output(ctx: dict[str, Any], output: str, executor: str) -> None:
    """The recorded result is the executor's JSON."""
    frames = ctx["streams"][-1]
    assert [f["event"] for f in frames] == ["started", "end"]
    end = json.loads(frames[-1]["data"])
    assert (end["output"], end["executor"]) == (json.loads(output), executor)


@then("the answer is 400 with code INVALID_TOOL_ARGS listing the schema errors")
def invalid_args(ctx: dict[str, Any]) -> None:
    """Each violation with its JSON path."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"], body["data"]["tool"]) == (
        400, "INVALID_TOOL_ARGS", "count")
    assert [e["path"] for e in body["data"]["errors"]] == ["$", "$.text"]


def _calls(ctx: dict[str, Any], executor: str) -> int:
    orch = ctx["client"].app.state.orch
    return int(orch.tools.get(executor).calls)


@then(parsers.parse('executor "{executor}" was called {n:d} times'))
def called(ctx: dict[str, Any], executor: str, n: int) -> None:
    """Counted at the executor."""
    assert _calls(ctx, executor) == n


@when("I replay that step in mode replay and in mode strict_replay")
def replay(ctx: dict[str, Any]) -> None:
    """Same client_token, both replay modes."""
    ctx["replays"] = []
    for mode in ("replay", "strict_replay"):
        run_id = ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs", json={
            "mode": mode, "replay_of": ctx["run_id"]}).json()["run_id"]
        _step, raw = run_to_end(ctx["client"], run_id, ctx["body"])
        ctx["replays"].append([(f["event"], f["data"]) for f in parse_sse(raw)
                               if f["id"] is not None])


@then("both replays equal the recording")
def replays_equal(ctx: dict[str, Any]) -> None:
    """Served verbatim."""
    recorded = [(f["event"], f["data"]) for f in ctx["streams"][-1]]
    assert ctx["replays"] == [recorded, recorded]


@when(parsers.parse('I call tool "{tool}" {n:d} times'))
def call_n(ctx: dict[str, Any], tool: str, n: int) -> None:
    """Repeated calls."""
    for _ in range(n):
        _call(ctx, tool, {})


@then("each ends with ENGINE_ERROR and the third has an escalation closed to open")
def breaker_opens(ctx: dict[str, Any]) -> None:
    """The executor's breaker opens on the third failure."""
    for frames in ctx["streams"]:
        assert json.loads(frames[-1]["data"])["code"] == "ENGINE_ERROR"
    assert [f["event"] for f in ctx["streams"][2]] == ["started", "escalation", "error"]
    esc = json.loads(ctx["streams"][2][1]["data"])
    assert (esc["target"], esc["to_state"]) == ("tool:fails", "open")


@then(parsers.parse('calling tool "{tool}" again is refused with 503 CIRCUIT_OPEN'))
def refused(ctx: dict[str, Any], tool: str) -> None:
    """Refused at admission."""
    before = _calls(ctx, "fails")
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=_body(ctx, tool, {}))
    assert (resp.status_code, resp.json()["code"]) == (503, "CIRCUIT_OPEN")
    assert _calls(ctx, "fails") == before


@when(parsers.parse('I call tool "{tool}" in a run whose policy denies it'))
def denied(ctx: dict[str, Any], tool: str) -> None:
    """deny_tools."""
    run_id = ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs", json={
        "policy": {"deny_tools": [tool]}}).json()["run_id"]
    ctx["answers"].append(ctx["client"].post(f"/v1/runs/{run_id}/steps",
                                             json=_body(ctx, tool, {"text": "x"})))


@when(parsers.parse('I try to create a flow whose tool "{tool}" requires "{prop}" to match '
                    '{pattern}'))
def flow_with_pattern(ctx: dict[str, Any], tool: str, prop: str, pattern: str) -> None:
    """A Flow whose tool (on the wc executor) constrains one string argument with a
    pattern given as a JSON string."""
    schema = {"type": "object", "required": [prop],
              "properties": {prop: {"type": "string", "pattern": json.loads(pattern)}}}
    resp = ctx["client"].post("/v1/flows", json={"ast_ir": {"t": 2}, "tools": [
        {"name": tool, "executor": "wc", "parameters": schema}]})
    ctx["answers"].append(resp)
    if resp.status_code in (200, 201):
        ctx["run_id"] = ctx["client"].post(f"/v1/flows/{resp.json()['flow_id']}/runs",
                                           json={}).json()["run_id"]


@when(parsers.parse('I call tool "{tool}" giving "{prop}" {n:d} "a" followed by "!"'))
def call_hostile(ctx: dict[str, Any], tool: str, prop: str, n: int) -> None:
    """The argument that makes a backtracking engine explode."""
    _call(ctx, tool, {prop: "a" * n + "!"})

@when(parsers.parse("on a server recording values of at most {limit:d} bytes a tool prints "
                    "{size:d} bytes"))
def big_output(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], limit: int,
               size: int) -> None:
    """An executor whose JSON output is a string of ``size`` characters."""
    script = f"import json; print(json.dumps({{'text': 'x' * {size - 11}}}))"
    tools = {**default_tool_executors(),
             "big": ToolExecutorConfig(kind="argv", argv=[sys.executable, "-c", script])}
    cfg = msgspec.structs.replace(mock_cfg, tools=tools, max_recorded_value_bytes=limit,
                                  data_dir=mock_cfg.data_dir + "-big")
    client = ctx["client"] = stack.enter_context(app_client(cfg))
    flow_id = client.post("/v1/flows", json={"ast_ir": {"big": 1}, "tools": [
        {"name": "big", "executor": "big", "parameters": {"type": "object"}}]}).json()["flow_id"]
    ctx["run_id"] = client.post(f"/v1/flows/{flow_id}/runs", json={}).json()["run_id"]
    _call(ctx, "big", {})


@then(parsers.parse("the step ends with OUTPUT_TOO_LARGE {data}"))
def too_large(ctx: dict[str, Any], data: str) -> None:
    """[POLICY-3030] Refused, never truncated: a typed error frame names the bound."""
    frames = ctx["streams"][-1]
    env = json.loads(frames[-1]["data"])
    assert [f["event"] for f in frames] == ["started", "error"]
    assert (env["code"], env["retriable"], env["data"]) == (
        "OUTPUT_TOO_LARGE", False, json.loads(data))


@then(parsers.parse("the tool ran once and no stored frame of the step is larger than "
                    "{limit:d} bytes"))
def nothing_large_stored(ctx: dict[str, Any], limit: int) -> None:
    """The tool's output was produced, and none of it reached the store."""
    orch = ctx["client"].app.state.orch
    step_id = ctx["answers"][-1].json()["step_id"]
    assert _calls(ctx, "big") == 1
    assert max(len(d) for _s, _t, d in orch.store.read_events(step_id, -1)) <= limit
