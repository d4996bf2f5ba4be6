"""llm_call response_contract (NERVE-4013): constrained decoding, validation, replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import PoolConfig, ServerConfig
from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.support import MOCK_MODEL, app_client, parse_sse, scripted_engine
from worker_adapters.base import EngineAdapter

scenarios("response_contract.feature")

SUMMARY: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["summary"],
           "properties": {"summary": {"type": "string"},
                          "score": {"type": "integer", "minimum": 0, "maximum": 5}}}


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


@given("a record run on the mock engine with a contract-aware model")
def background(ctx: dict[str, Any]) -> None:
    """The app starts when the engine's answer is known (default: the seeded mock)."""
    ctx["answer"] = None


@given(parsers.parse("the model answers {answer}"))
def answers(ctx: dict[str, Any], answer: str) -> None:
    """A scripted engine; ``<200 a and !>`` stands for 200 letters a followed by "!"."""
    ctx["answer"] = answer.replace("<200 a and !>", "a" * 200 + "!")


def _client(stack: ExitStack, cfg: ServerConfig, ctx: dict[str, Any]) -> Any:
    if "client" not in ctx:
        engines: list[Any] = []

        def factory(pc: PoolConfig, index: int) -> EngineAdapter:
            eng = scripted_engine(ctx["answer"])
            engines.append(eng)
            return eng  # type: ignore[no-any-return]

        ctx["client"] = stack.enter_context(app_client(cfg, engine_factory=factory))
        ctx["engines"] = engines
        ctx["run_id"] = new_run(ctx["client"])
        ctx["answers"] = []
    return ctx["client"]


def _body(contract: Any, max_tokens: int = 64) -> dict[str, Any]:
    return {"type": "llm_call", "client_token": "c-1", "input": {
        "model": MOCK_MODEL, "prompt": "Summarise: replay is byte exact.",
        "params": {"max_tokens": max_tokens}, "response_contract": contract}}


def _call(stack: ExitStack, cfg: ServerConfig, ctx: dict[str, Any], body: dict[str, Any],
          run_id: str | None = None) -> None:
    client = _client(stack, cfg, ctx)
    resp = client.post(f"/v1/runs/{run_id or ctx['run_id']}/steps", json=body)
    ctx["answers"].append(resp)
    if resp.status_code == 201:
        ctx["body"], ctx["step_id"] = body, resp.json()["step_id"]
        with client.stream("GET", f"/v1/steps/{ctx['step_id']}/stream") as s:
            ctx["frames"] = [f for f in parse_sse(b"".join(s.iter_bytes()))
                             if f["id"] is not None]


@when("I call the model with the summary contract")
def call(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """One llm_call with the contract."""
    _call(stack, mock_cfg, ctx, _body(SUMMARY))


@when(parsers.parse("I call the model with the summary contract and max_tokens {n:d}"))
def call_short(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], n: int) -> None:
    """A sampling limit too small for the answer."""
    _call(stack, mock_cfg, ctx, _body(SUMMARY, max_tokens=n))


@when(parsers.parse("I call the model with the contract {contract}"))
def call_bad(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any],
             contract: str) -> None:
    """A contract that is not a JSON Schema."""
    _call(stack, mock_cfg, ctx, _body(json.loads(contract)))


@then(parsers.parse("the step ends with output value {value}"))
def output_value(ctx: dict[str, Any], value: str) -> None:
    """The parsed, validated value is recorded next to the text."""
    end = ctx["frames"][-1]
    assert end["event"] == "end"
    output = json.loads(end["data"])["output"]
    assert output["value"] == json.loads(value)
    assert json.loads(output["text"]) == json.loads(value)


@then("the engine was asked for JSON matching the summary contract")
def asked(ctx: dict[str, Any]) -> None:
    """The schema travels to the engine (constrained decoding where supported)."""
    assert ctx["engines"][0].last_request.json_schema == SUMMARY


@then(parsers.parse('the stream ends with error CONTRACT_VIOLATION reason "{reason}"'))
def violation(ctx: dict[str, Any], reason: str) -> None:
    """A typed error frame; no end frame, no hidden retry."""
    events = [f["event"] for f in ctx["frames"]]
    assert events[-1] == "error" and "end" not in events
    data = json.loads(ctx["frames"][-1]["data"])
    assert (data["code"], data["retriable"], data["data"]["reason"]) == (
        "CONTRACT_VIOLATION", False, reason)
    assert sum(e.requests for e in ctx["engines"]) == 1


@then("the step's status is failed, with its tokens counted")
def failed(ctx: dict[str, Any]) -> None:
    """The tokens the engine produced are still charged to the Run."""
    step = ctx["client"].get(f"/v1/steps/{ctx['step_id']}").json()
    tokens = sum(1 for f in ctx["frames"] if f["event"] == "token")
    assert (step["status"], step["usage"]["tokens_out"]) == ("failed", tokens)
    assert step["error"]["code"] == "CONTRACT_VIOLATION"


@then(parsers.parse("the engine received {n:d} requests"))
def engine_requests(ctx: dict[str, Any], n: int) -> None:
    """Counted at the adapter."""
    assert sum(e.requests for e in ctx["engines"]) == n


@when("I strict-replay it with another contract")
def strict_other(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """Same client_token; the contract allows one more property."""
    other = {**SUMMARY, "properties": {**SUMMARY["properties"], "tags": {"type": "array"}}}
    client = ctx["client"]
    flow_id = client.get(f"/v1/runs/{ctx['run_id']}").json()["flow_id"]
    run_id = client.post(f"/v1/flows/{flow_id}/runs", json={
        "mode": "strict_replay", "replay_of": ctx["run_id"]}).json()["run_id"]
    _call(stack, mock_cfg, ctx, _body(other), run_id)


@then("the answer is 409 with code DETERMINISM_INPUTS_DIFFER naming params_hash")
def inputs_differ(ctx: dict[str, Any]) -> None:
    """Refused before started, naming the field."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
    assert list(body["data"]["fields"]) == ["params_hash"]


@when("I replay the contract step in mode replay and in mode strict_replay")
def replay(ctx: dict[str, Any]) -> None:
    """Both replay modes, same client_token."""
    client = ctx["client"]
    flow_id = client.get(f"/v1/runs/{ctx['run_id']}").json()["flow_id"]
    ctx["replays"] = []
    for mode in ("replay", "strict_replay"):
        run_id = client.post(f"/v1/flows/{flow_id}/runs", json={
            "mode": mode, "replay_of": ctx["run_id"]}).json()["run_id"]
        _step, raw = run_to_end(client, run_id, ctx["body"])
        ctx["replays"].append([f for f in parse_sse(raw) if f["id"] is not None])


@then("both replays equal the contract recording")
def replays_equal(ctx: dict[str, Any]) -> None:
    """Same token bytes and the same recorded value in both modes."""
    def tokens(frames: list[dict[str, Any]]) -> list[str]:
        return [f["data"] for f in frames if f["event"] == "token"]

    def value(frames: list[dict[str, Any]]) -> Any:
        return json.loads(frames[-1]["data"])["output"]["value"]
    for frames in ctx["replays"]:
        assert tokens(frames) == tokens(ctx["frames"])
        assert value(frames) == value(ctx["frames"])
    assert sum(e.requests for e in ctx["engines"]) == 2
