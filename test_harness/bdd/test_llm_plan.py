"""llm_plan (NERVE-4010, NERVE-4011): tool menus, intents, typed tool_suggest frames."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.flows import ToolSchema
from orchestrator_core.config import PoolConfig, ServerConfig
from orchestrator_core.planning import menu_text, tool_menu
from test_harness.bdd.conftest import run_to_end
from test_harness.support import MOCK_MODEL, app_client, parse_sse, scripted_engine
from worker_adapters.base import EngineAdapter
from worker_adapters.tools import default_tool_executors

scenarios("llm_plan.feature")

TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 64}},
               "required": ["text"], "additionalProperties": False}
TOOLS = [
    {"name": "count", "executor": "wc", "description": "Count the words of a text.",
     "parameters": TEXT_SCHEMA},
    {"name": "digest", "executor": "sha256", "description": "SHA-256 of a text.",
     "parameters": TEXT_SCHEMA},
]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


@given('a flow declaring tools "count" and "digest" with JSON Schemas')
def flow(ctx: dict[str, Any]) -> None:
    """Remembered; the app starts when the engine is chosen."""
    ctx["tools"] = TOOLS


def _start(stack: ExitStack, cfg: ServerConfig, ctx: dict[str, Any], answer: str | None) -> None:
    engines: list[Any] = []

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        eng = scripted_engine(answer)
        engines.append(eng)
        return eng  # type: ignore[no-any-return]

    cfg = msgspec.structs.replace(cfg, tools=default_tool_executors())
    client = stack.enter_context(app_client(cfg, engine_factory=factory))
    ctx.update(client=client, engines=engines, answers=[], n=0)
    ctx["flow_id"] = client.post("/v1/flows", json={"ast_ir": {"plan": 1},
                                                    "tools": TOOLS}).json()["flow_id"]


@given(parsers.parse("the model answers {answer}"))
def answers(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], answer: str) -> None:
    """A scripted engine."""
    _start(stack, mock_cfg, ctx, answer)


@given("the default mock engine")
def default_engine(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """The seeded mock engine (it answers JSON of the requested schema)."""
    _start(stack, mock_cfg, ctx, None)


def _run(ctx: dict[str, Any], **run: Any) -> str:
    resp = ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs", json={"seed": 3, **run})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def _plan(ctx: dict[str, Any], menu: str, **run: Any) -> None:
    ctx["run_id"] = _run(ctx, **run)
    ctx["body"] = {"type": "llm_plan", "client_token": "plan-1", "input": {
        "model": MOCK_MODEL, "tools": menu.split(","), "params": {"max_tokens": 200},
        "messages": [{"role": "user", "content": "Count the words of 'a b'."}]}}
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"])
    ctx["answers"].append(resp)
    if resp.status_code == 201:
        with ctx["client"].stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
            ctx["frames"] = [f for f in parse_sse(b"".join(s.iter_bytes()))
                             if f["id"] is not None]


@when(parsers.parse('I plan with the menu "{menu}"'))
def plan(ctx: dict[str, Any], menu: str) -> None:
    """One llm_plan, read to its end."""
    _plan(ctx, menu)


@when(parsers.parse('I plan with the menu "{menu}" in a run whose policy denies tool "{tool}"'))
def plan_denied(ctx: dict[str, Any], menu: str, tool: str) -> None:
    """The run's policy denies one menu tool."""
    _plan(ctx, menu, policy={"deny_tools": [tool]})


def _suggestions(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    return [json.loads(f["data"]) for f in ctx["frames"] if f["event"] == "tool_suggest"]


@then(parsers.parse("the frames are started, tokens, {n:d} tool_suggest and end"))
def frame_order(ctx: dict[str, Any], n: int) -> None:
    """STREAM-2001 order: suggestions follow the tokens and precede end."""
    events = [f["event"] for f in ctx["frames"]]
    tokens = events.count("token")
    assert tokens > 0
    assert events == ["started"] + ["token"] * tokens + ["tool_suggest"] * n + ["end"]
    assert [s["i"] for s in _suggestions(ctx)] == list(range(n))


@then(parsers.parse('suggestion {i:d} is a valid call of "{tool}" with {args}'))
def valid_suggestion(ctx: dict[str, Any], i: int, tool: str, args: str) -> None:
    """Valid, with no error."""
    assert _suggestions(ctx)[i] == {"i": i, "tool": tool, "args": json.loads(args),
                                    "valid": True}


@then(parsers.parse('suggestion {i:d} is invalid with INVALID_TOOL_ARGS reason "{reason}"'))
def invalid_suggestion(ctx: dict[str, Any], i: int, reason: str) -> None:
    """Typed: the error envelope names the code and the reason."""
    sug = _suggestions(ctx)[i]
    assert sug["valid"] is False
    assert (sug["error"]["code"], sug["error"]["data"]["reason"]) == ("INVALID_TOOL_ARGS",
                                                                      reason)


@then(parsers.parse("the end output lists {n:d} intents of which {k:d} are valid"))
def end_output(ctx: dict[str, Any], n: int, k: int) -> None:
    """The recorded output summarises the plan."""
    end = json.loads(ctx["frames"][-1]["data"])
    assert ctx["frames"][-1]["event"] == "end"
    assert (len(end["output"]["intents"]), end["output"]["valid"]) == (n, k)


@then(parsers.parse('the engine was asked for JSON with one intent shape per menu tool: '
                    '"{names}"'))
def asked_schema(ctx: dict[str, Any], names: str) -> None:
    """The strict envelope: one anyOf branch per tool, with that tool's argument schema."""
    schema = ctx["engines"][0].last_request.json_schema
    branches = schema["properties"]["intents"]["items"]["anyOf"]
    assert [b["properties"]["tool"]["const"] for b in branches] == names.split(",")
    assert all(b["properties"]["args"] == TEXT_SCHEMA for b in branches)


@then("the prompt the engine saw starts with the tool menu")
def prompt_menu(ctx: dict[str, Any]) -> None:
    """The mock renders `role: content` lines; the menu is the first system message."""
    menu = tool_menu([msgspec.convert(t, ToolSchema) for t in TOOLS], ["digest"])
    prompt = ctx["engines"][0].last_request.prompt
    assert prompt.startswith("system: " + menu_text(menu, 4))


@then("every suggestion of the plan is valid")
def all_valid(ctx: dict[str, Any]) -> None:
    """The seeded mock honours the schema, so every suggestion validates."""
    sugs = _suggestions(ctx)
    assert sugs and all(s["valid"] for s in sugs)


@then(parsers.parse('the stream ends with error CONTRACT_VIOLATION reason "{reason}"'))
def violation(ctx: dict[str, Any], reason: str) -> None:
    """No tool_suggest frame is emitted for an unreadable plan."""
    last = ctx["frames"][-1]
    data = json.loads(last["data"])
    assert (last["event"], data["code"], data["data"]["reason"]) == (
        "error", "CONTRACT_VIOLATION", reason)
    assert not _suggestions(ctx)


@then(parsers.parse("the engine received {n:d} requests"))
def engine_requests(ctx: dict[str, Any], n: int) -> None:
    """Counted at the adapter."""
    assert sum(e.requests for e in ctx["engines"]) == n


@when("I replay the plan in mode replay and in mode strict_replay")
def replay(ctx: dict[str, Any]) -> None:
    """Same client_token in a replay and a strict_replay run."""
    ctx["replays"] = []
    for mode in ("replay", "strict_replay"):
        run_id = _run(ctx, mode=mode, replay_of=ctx["run_id"])
        _step, raw = run_to_end(ctx["client"], run_id, ctx["body"])
        ctx["replays"].append([(f["event"], f["data"]) for f in parse_sse(raw)
                               if f["id"] is not None])


@then("both replays equal the recording frame for frame")
def replays_equal(ctx: dict[str, Any]) -> None:
    """replay serves the log verbatim; strict_replay decodes again and produces the same
    token and tool_suggest bytes and the same output (its placement is the recorded
    replica, pinned, and it measures its own decode time)."""
    recorded = [(f["event"], f["data"]) for f in ctx["frames"]]
    assert ctx["replays"][0] == recorded

    def produced(frames: list[tuple[str, str]]) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for event, data in frames:
            if event == "end":
                doc = json.loads(data)
                doc["provenance"].pop("decode_time_ms")
                out.append((event, doc))
            elif event in ("token", "tool_suggest"):
                out.append((event, data))
        return out
    assert produced(ctx["replays"][1]) == produced(recorded)
    assert any(e == "tool_suggest" for e, _ in recorded)


@when(parsers.parse("I run suggestion {i:d} as a tool_call"))
def run_suggestion(ctx: dict[str, Any], i: int) -> None:
    """The interpreter passes the suggested tool and arguments on unchanged."""
    sug = _suggestions(ctx)[i]
    assert sug["valid"]
    _step, raw = run_to_end(ctx["client"], ctx["run_id"], {
        "type": "tool_call", "client_token": "run-0",
        "input": {"tool": sug["tool"], "args": sug["args"]}})
    ctx["tool_frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then(parsers.parse("the tool_call ends with output words {n:d}"))
def tool_output(ctx: dict[str, Any], n: int) -> None:
    """The built-in wc executor ran."""
    end = ctx["tool_frames"][-1]
    assert end["event"] == "end"
    assert json.loads(end["data"])["output"]["words"] == n
