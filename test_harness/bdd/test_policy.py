"""Policy before execution and hard budgets (POLICY-3003, POLICY-3000, NERVE-4002)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.canonical import b3
from orchestrator_core.config import ModelPrice, PoolConfig, PriceTable, ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import MOCK_MODEL, app_client, llm_step, parse_sse
from worker_adapters.base import EngineAdapter
from worker_adapters.mock import MockEngine, default_handler

scenarios("policy.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _start(stack: ExitStack, cfg: ServerConfig, ctx: dict[str, Any], rate: float) -> None:
    engines: list[MockEngine] = []

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        eng = MockEngine(default_handler(tokens_per_s=rate, length=40))
        engines.append(eng)
        return eng

    client = stack.enter_context(app_client(cfg, engine_factory=factory))
    ctx.update(engines=engines, client=client, answers=[],
               flow_id=client.post("/v1/flows", json={"ast_ir": {"p": 1}}).json()["flow_id"])


@given("a flow on the mock engine")
def flow(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """An in-process server with counted mock engines."""
    _start(stack, mock_cfg, ctx, 0.0)


@given(parsers.parse("a flow on the mock engine priced at {pin:f} USD per input and {pout:f} "
                     "USD per output token"))
def priced_flow(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], pin: float,
                pout: float) -> None:
    """A price table for the mock model (USD per million tokens)."""
    prices = PriceTable(version="test-1", models={MOCK_MODEL: ModelPrice(
        usd_per_mtok_in=pin * 1e6, usd_per_mtok_out=pout * 1e6)})
    _start(stack, msgspec.structs.replace(mock_cfg, prices=prices), ctx, 0.0)


@given(parsers.parse("a flow on a mock engine at {rate:d} tokens per second"))
def slow_flow(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], rate: int) -> None:
    """A slow mock engine."""
    _start(stack, mock_cfg, ctx, float(rate))


def _run(ctx: dict[str, Any], **body: Any) -> None:
    resp = ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs", json=body)
    assert resp.status_code == 201, resp.text
    ctx["run"] = resp.json()


@when("I create a record run with seed 42, a step budget and a policy")
def create_full(ctx: dict[str, Any], mock_cfg: ServerConfig) -> None:
    """Every Run field set; the sandbox root lies in <data_dir>/sandboxes/default."""
    import pathlib

    ctx["root"] = str((pathlib.Path(mock_cfg.data_dir) / "sandboxes" / "default" / "r")
                      .resolve())
    ctx["policy"] = {"deny_models": ["hf:x"]}
    _run(ctx, seed=42, budgets={"max_tokens_out": 100, "max_cost_usd": 0.5},
         policy=ctx["policy"],
         pool_policy={"placement": {"strategy": "pin", "pool_id": "mock-0"}},
         fs_policy={"roots": [ctx["root"]], "max_files": 3})


@then("the run shows mode record, seed 42, its budgets, policy, pool_policy and fs_policy")
def run_shape(ctx: dict[str, Any]) -> None:
    """Read back through GET /v1/runs/{id}."""
    run = ctx["client"].get(f"/v1/runs/{ctx['run']['run_id']}").json()
    assert (run["mode"], run["seed"], run["status"], run["replay_of"]) == (
        "record", 42, "active", None)
    assert run["budgets"] == {"max_tokens_out": 100, "max_cost_usd": 0.5}
    assert run["policy"] == ctx["policy"]
    assert run["pool_policy"] == {"placement": {"strategy": "pin", "pool_id": "mock-0"}}
    assert run["fs_policy"] == {"roots": [ctx["root"]], "max_files": 3}
    assert run["usage"] == {"tokens_in": 0, "tokens_out": 0, "wall_ms": 0, "cost_usd": 0.0}


@then("its policy_hash is the content hash of the policy")
def policy_hash(ctx: dict[str, Any]) -> None:
    """The policy hash is a determinism input."""
    assert ctx["run"]["policy_hash"] == b3(ctx["policy"])


@when(parsers.parse('I create a record run whose policy denies model "{model}"'))
def deny_model(ctx: dict[str, Any], model: str) -> None:
    """deny_models."""
    _run(ctx, policy={"deny_models": [model]})


@when(parsers.parse('I create a record run whose policy allows only step type "{t}"'))
def allow_type(ctx: dict[str, Any], t: str) -> None:
    """allow_step_types."""
    _run(ctx, policy={"allow_step_types": [t]})


@when(parsers.parse('I submit an llm_call on model "{model}"'))
def submit(ctx: dict[str, Any], model: str) -> None:
    """One submission."""
    ctx["answers"].append(ctx["client"].post(f"/v1/runs/{ctx['run']['run_id']}/steps",
                                             json=llm_step("p-1", model=model)))


@then("the engines received no request and the run has no step")
def no_compute(ctx: dict[str, Any]) -> None:
    """Refused before execution."""
    assert sum(e.requests for e in ctx["engines"]) == 0
    assert ctx["client"].get(f"/v1/runs/{ctx['run']['run_id']}").json()["steps"] == {}


@when(parsers.parse("I create a record run with a run budget of {n:d} output tokens"))
def out_budget(ctx: dict[str, Any], n: int) -> None:
    """Run-level max_tokens_out."""
    _run(ctx, budgets={"max_tokens_out": n})


@when("I create a record run")
def plain_run(ctx: dict[str, Any]) -> None:
    """No budgets."""
    _run(ctx)


@when("I run an llm_call that would produce 40 tokens")
def run_40(ctx: dict[str, Any]) -> None:
    """The mock produces 40 tokens unless stopped."""
    _step, raw = run_to_end(ctx["client"], ctx["run"]["run_id"], llm_step("b-1"))
    ctx["frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@when(parsers.parse("I run an llm_call with a step max_wall_ms of {ms:d}"))
def run_deadline(ctx: dict[str, Any], ms: int) -> None:
    """Step-level max_wall_ms."""
    body = {**llm_step("w-1"), "budgets": {"max_wall_ms": ms}}
    _step, raw = run_to_end(ctx["client"], ctx["run"]["run_id"], body)
    ctx["frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then(parsers.parse("the stream ends with error {code} on {budget} after {n:d} token frames"))
def ends_after(ctx: dict[str, Any], code: str, budget: str, n: int) -> None:
    """Exactly n tokens, then the typed error naming the budget."""
    assert [f["event"] for f in ctx["frames"]] == ["started"] + ["token"] * n + ["error"]
    err = json.loads(ctx["frames"][-1]["data"])
    assert (err["code"], err["data"]) == (code, {"budget": budget, "limit": n})


@then(parsers.parse("the stream ends with error {code}"))
def ends_with(ctx: dict[str, Any], code: str) -> None:
    """The terminal frame carries the code."""
    assert ctx["frames"][-1]["event"] == "error"
    assert json.loads(ctx["frames"][-1]["data"])["code"] == code
    assert 0 < sum(1 for f in ctx["frames"] if f["event"] == "token") < 40


@when(parsers.parse("I create a record run with a run budget of {n:d} input tokens"))
def in_budget(ctx: dict[str, Any], n: int) -> None:
    """Run-level max_tokens_in."""
    _run(ctx, budgets={"max_tokens_in": n})


@when(parsers.parse("I create a record run with a cost budget of {usd:f} USD"))
def cost_budget(ctx: dict[str, Any], usd: float) -> None:
    """Run-level max_cost_usd."""
    _run(ctx, budgets={"max_cost_usd": usd})


@when(parsers.parse("I submit {n:d} llm_calls of {k:d} tokens each at once"))
def submit_many(ctx: dict[str, Any], n: int, k: int) -> None:
    """All submitted before any finishes (each would produce k tokens)."""
    ctx["answers"] = [ctx["client"].post(f"/v1/runs/{ctx['run']['run_id']}/steps",
                                         json=llm_step(f"m-{i}", f"prompt {i}", max_tokens=k))
                      for i in range(n)]
    for resp in ctx["answers"]:
        if resp.status_code == 201:
            with ctx["client"].stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
                b"".join(s.iter_bytes())


@then(parsers.parse("{ok:d} steps are admitted and {bad:d} are refused with 402 "
                    "BUDGET_EXCEEDED"))
def admitted(ctx: dict[str, Any], ok: int, bad: int) -> None:
    """Admission reserves; the rest is refused before any compute."""
    codes = [(r.status_code, r.json().get("code")) for r in ctx["answers"]]
    assert codes.count((201, None)) == ok
    assert codes.count((402, "BUDGET_EXCEEDED")) == bad


@then(parsers.parse("the run produced at most {n:d} output tokens in total"))
def at_most(ctx: dict[str, Any], n: int) -> None:
    """The sum over the run's steps, and what the engines generated."""
    run = ctx["client"].get(f"/v1/runs/{ctx['run']['run_id']}").json()
    assert run["usage"]["tokens_out"] <= n
    assert sum(e.tokens_generated for e in ctx["engines"]) <= n


@when(parsers.parse("I submit an llm_call with a {n:d}-word prompt"))
def long_prompt(ctx: dict[str, Any], n: int) -> None:
    """A prompt of n words (the mock counts one token per word, plus one)."""
    ctx["answers"].append(ctx["client"].post(f"/v1/runs/{ctx['run']['run_id']}/steps",
                                             json=llm_step("w-1", " ".join(["w"] * n))))


@then(parsers.parse("the answer is 402 with code BUDGET_EXCEEDED naming {budget}"))
def refused_budget(ctx: dict[str, Any], budget: str) -> None:
    """Refused before started, naming the budget."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["budget"]) == (
        402, "BUDGET_EXCEEDED", budget)


@then(parsers.parse("the end of the run shows a cost of at most {usd:f} USD"))
def run_cost(ctx: dict[str, Any], usd: float) -> None:
    """Usage is priced by the versioned table."""
    run = ctx["client"].get(f"/v1/runs/{ctx['run']['run_id']}").json()
    assert 0 < run["usage"]["cost_usd"] <= usd


@then(parsers.parse("GET /v1/runs/{{id}} carries X-Budget-Tokens-Out-Remaining {n:d}"))
def budget_header(ctx: dict[str, Any], n: int) -> None:
    """What is left after the finished step."""
    resp = ctx["client"].get(f"/v1/runs/{ctx['run']['run_id']}")
    assert resp.headers["X-Budget-Tokens-Out-Remaining"] == str(n)
    assert "X-Budget-Cost-Usd-Remaining" not in resp.headers


@when(parsers.parse('I create a record run whose policy redacts "{pattern}"'))
def redacting_run(ctx: dict[str, Any], pattern: str) -> None:
    """policy.redact."""
    _run(ctx, policy={"redact": [pattern]})


@when(parsers.parse('I try to create a run whose policy redacts "{pattern}"'))
def bad_redact(ctx: dict[str, Any], pattern: str) -> None:
    """An invalid regular expression."""
    ctx["answers"].append(ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs",
                                             json={"policy": {"redact": [pattern]}}))


@when(parsers.parse('I run an llm_call with the prompt "{prompt}"'))
def run_prompt(ctx: dict[str, Any], prompt: str) -> None:
    """A prompt holding secrets."""
    step, raw = run_to_end(ctx["client"], ctx["run"]["run_id"], llm_step("r-1", prompt))
    ctx["step"] = step
    ctx["frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then(parsers.parse('the engine saw the prompt "{prompt}"'))
def engine_saw(ctx: dict[str, Any], prompt: str) -> None:
    """Redacted before dispatch."""
    (engine,) = [e for e in ctx["engines"] if e.requests]
    assert engine.last_request is not None and engine.last_request.prompt == prompt


@then(parsers.parse("the started frame records {n:d} redactions"))
def recorded_redactions(ctx: dict[str, Any], n: int) -> None:
    """Explicit and recorded in the log."""
    started = json.loads(ctx["frames"][0]["data"])
    assert started["redactions"] == n


@then("the stored step input holds the redacted prompt, not the secrets")
def stored_redacted(ctx: dict[str, Any]) -> None:
    """Secrets do not reach the store either."""
    step = ctx["client"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["input"]["prompt"] == "my key is [REDACTED] and [REDACTED]"


@when(parsers.parse('I run an llm_call whose prompt is {n:d} "a" followed by "!"'))
def run_hostile_prompt(ctx: dict[str, Any], n: int) -> None:
    """The prompt that makes a backtracking engine explode."""
    run_prompt(ctx, "a" * n + "!")


@then(parsers.parse('the refusal names field "{field}"'))
def refusal_field(ctx: dict[str, Any], field: str) -> None:
    """The run was refused naming the request field."""
    assert ctx["answers"][-1].json()["data"]["field"] == field
