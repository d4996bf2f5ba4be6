"""The exact-match cache (REC-7100 .. REC-7107): engine requests counted at the adapter."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import PoolConfig, ServerConfig
from test_harness.support import app_client, llm_step, parse_sse, table_counts
from worker_adapters.base import EngineAdapter, PreparedPrompt
from worker_adapters.mock import MockEngine
from worker_adapters.tools import default_tool_executors

scenarios("exact_cache.feature")

WORDS = {"type": "object", "properties": {"text": {"type": "string"}},
         "required": ["text"], "additionalProperties": False}


class CountingEngine(MockEngine):
    """The mock engine, also counting prompt counts (the admission's engine call)."""

    prepares = 0

    def prepare(self, *, prompt: str | None,
                messages: Sequence[dict[str, str]] | None) -> PreparedPrompt:
        CountingEngine.prepares += 1
        return super().prepare(prompt=prompt, messages=messages)


class Env:
    """An in-process server with two tenants whose engines are counted."""

    def __init__(self, cfg: ServerConfig, stack: ExitStack) -> None:
        self.engines: list[MockEngine] = []
        CountingEngine.prepares = 0
        self.db = pathlib.Path(cfg.data_dir) / "orchestrator.db"
        self.client = stack.enter_context(app_client(cfg, engine_factory=self.factory))

    def factory(self, _pc: PoolConfig, _index: int) -> EngineAdapter:
        eng = CountingEngine()
        self.engines.append(eng)
        return eng

    def requests(self) -> int:
        return sum(e.requests for e in self.engines)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{tenant}"}


@given(parsers.parse('a mock-engine server with tenants "{a}" and "{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], a: str,
           b: str) -> None:
    """Two tenants, each with its Flow (same content), on counted mock engines."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={f"tok-{a}": a, f"tok-{b}": b},
                                  tools=default_tool_executors())
    env = Env(cfg, stack)
    ctx.update(env=env, answers=[], steps=[], raws=[], runs=[], flows={})
    for tenant in (a, b):
        flow = env.client.post("/v1/flows", headers=_as(tenant), json={
            "ast_ir": {"cache": True},
            "tools": [{"name": "count", "executor": "wc", "parameters": WORDS}]}).json()
        ctx["flows"][tenant] = flow["flow_id"]


def _run(ctx: dict[str, Any], tenant: str, **body: Any) -> str:
    resp = ctx["env"].client.post(f"/v1/flows/{ctx['flows'][tenant]}/runs",
                                  headers=_as(tenant), json=body)
    assert resp.status_code == 201, resp.text
    ctx["runs"].append(resp.json()["run_id"])
    return str(resp.json()["run_id"])


def _step(ctx: dict[str, Any], tenant: str, run_id: str, body: dict[str, Any]) -> None:
    """Submit a step, read its whole stream and keep both."""
    client = ctx["env"].client
    resp = client.post(f"/v1/runs/{run_id}/steps", json=body, headers=_as(tenant))
    assert resp.status_code == 201, resp.text
    step_id = resp.json()["step_id"]
    with client.stream("GET", f"/v1/steps/{step_id}/stream", headers=_as(tenant)) as s:
        ctx["raws"].append(b"".join(s.iter_bytes()))
    ctx["steps"].append(client.get(f"/v1/steps/{step_id}", headers=_as(tenant)).json())


@given(parsers.parse('tenant "{tenant}" recorded step "{token}" with prompt "{prompt}" in a '
                     'run with seed {seed:d}'))
@when(parsers.parse('tenant "{tenant}" runs step "{token}" with prompt "{prompt}" in a run '
                    'with seed {seed:d}'))
def recorded(ctx: dict[str, Any], tenant: str, token: str, prompt: str, seed: int) -> None:
    """A record run with the cache off and one llm_call step."""
    _step(ctx, tenant, _run(ctx, tenant, seed=seed), llm_step(token, prompt))


@given(parsers.parse('tenant "{tenant}" recorded step "{token}" with prompt "{prompt}" in a '
                     'run with seed {seed:d} that failed on its output budget'))
def recorded_failed(ctx: dict[str, Any], tenant: str, token: str, prompt: str,
                    seed: int) -> None:
    """A record run whose output budget cuts its one step."""
    run_id = _run(ctx, tenant, seed=seed, budgets={"max_tokens_out": 2})
    _step(ctx, tenant, run_id, llm_step(token, prompt))
    assert ctx["steps"][-1]["status"] == "failed"


@given(parsers.parse('tenant "{tenant}" runs step "{token}" with prompt "{prompt}" in a run '
                     'with seed {seed:d} and the cache on'))
@when(parsers.parse('tenant "{tenant}" runs step "{token}" with prompt "{prompt}" in a run '
                    'with seed {seed:d} and the cache on'))
def cached_run(ctx: dict[str, Any], tenant: str, token: str, prompt: str, seed: int) -> None:
    """A record run with the cache on and one llm_call step."""
    _step(ctx, tenant, _run(ctx, tenant, seed=seed, cache="exact"), llm_step(token, prompt))


@when(parsers.parse('tenant "{tenant}" runs step "{token}" with prompt "{prompt}" at '
                    'temperature {t:f} in a run with seed {seed:d} and the cache on'))
def cached_run_params(ctx: dict[str, Any], tenant: str, token: str, prompt: str, t: float,
                      seed: int) -> None:
    """The same step with another temperature."""
    _step(ctx, tenant, _run(ctx, tenant, seed=seed, cache="exact"),
          llm_step(token, prompt, temperature=t))


@when(parsers.parse('tenant "{tenant}" runs step "{token}" with prompt "{prompt}" in a run '
                    'with seed {seed:d}, the cache on and max_tokens_out {cap:d}'))
def cached_run_capped(ctx: dict[str, Any], tenant: str, token: str, prompt: str, seed: int,
                      cap: int) -> None:
    """The same step in a run whose output budget is below the source's output."""
    run_id = _run(ctx, tenant, seed=seed, cache="exact", budgets={"max_tokens_out": cap})
    _step(ctx, tenant, run_id, llm_step(token, prompt))


@when(parsers.parse('tenant "{tenant}" runs steps "{a}" and "{b}" with prompt "{prompt}" and '
                    'params seed {seed:d} in one run with the cache on'))
def two_seeded(ctx: dict[str, Any], tenant: str, a: str, b: str, prompt: str,
               seed: int) -> None:
    """Two client tokens, one input that fixes the seed."""
    run_id = _run(ctx, tenant, seed=7, cache="exact")
    for token in (a, b):
        _step(ctx, tenant, run_id, llm_step(token, prompt, seed=seed))


@when(parsers.parse('tenant "{tenant}" runs steps "{a}" and "{b}" with prompt "{prompt}" in '
                    'one run with the cache on'))
def two_derived(ctx: dict[str, Any], tenant: str, a: str, b: str, prompt: str) -> None:
    """Two client tokens, one input; each step's seed is derived from its token."""
    run_id = _run(ctx, tenant, seed=7, cache="exact")
    for token in (a, b):
        _step(ctx, tenant, run_id, llm_step(token, prompt))


@when(parsers.parse('tenant "{tenant}" runs the tool call "{tool}" twice with the same '
                    'arguments in one run with the cache on'))
def tool_twice(ctx: dict[str, Any], tenant: str, tool: str) -> None:
    """Two tool_call steps of one input."""
    run_id = _run(ctx, tenant, seed=7, cache="exact")
    for token in ("t-1", "t-2"):
        _step(ctx, tenant, run_id, {"type": "tool_call", "client_token": token,
                                    "input": {"tool": tool, "args": {"text": "a b c"}}})


@when(parsers.parse('tenant "{tenant}" replays the second run in mode {mode}'))
def replay(ctx: dict[str, Any], tenant: str, mode: str) -> None:
    """A replay run of the run that used the cache, with the same step."""
    run_id = _run(ctx, tenant, mode=mode, replay_of=ctx["runs"][1])
    _step(ctx, tenant, run_id, llm_step("s-1", "tell me a story"))


@when(parsers.parse('tenant "{tenant}" creates a replay run of it with the cache on'))
def replay_cache(ctx: dict[str, Any], tenant: str) -> None:
    """The cache asked for on a replay run."""
    ctx["answers"].append(ctx["env"].client.post(
        f"/v1/flows/{ctx['flows'][tenant]}/runs", headers=_as(tenant),
        json={"mode": "replay", "replay_of": ctx["runs"][0], "cache": "exact"}))


@then(parsers.re(r"the engines received (?P<n>\d+) completion requests? and (?P<p>\d+) "
                 r"prompt counts? in all"))
def engine_requests(ctx: dict[str, Any], n: str, p: str) -> None:
    """Counted at the adapter: completions streamed, prompts rendered and counted."""
    assert (ctx["env"].requests(), CountingEngine.prepares) == (int(n), int(p))


@then(parsers.parse('/metrics counts {n:d} llm_call step served from "{source}"'))
def served_metric(ctx: dict[str, Any], n: int, source: str) -> None:
    """``orchestrator_steps_served_total{type="llm_call", source=...}`` (REC-7103)."""
    text = ctx["env"].client.get("/metrics", headers=_as("acme")).text
    line = f'orchestrator_steps_served_total{{source="{source}",type="llm_call"}} '
    assert [float(ln[len(line):]) for ln in text.splitlines() if ln.startswith(line)] == [n]


@then("the second step's stream equals the first step's stream byte for byte")
def same_stream(ctx: dict[str, Any]) -> None:
    """Served by reference: every frame id, type and data byte."""
    assert ctx["raws"][1] == ctx["raws"][0]
    assert b"event: end\n" in ctx["raws"][0]


@then("the second step is succeeded with the first step's usage and seed")
def same_usage(ctx: dict[str, Any]) -> None:
    """Status, usage, seed and last_seq are the source's."""
    keys = ("status", "usage", "seed", "last_seq")
    first, second = ctx["steps"][0], ctx["steps"][1]
    assert {k: second[k] for k in keys} == {k: first[k] for k in keys}
    assert (second["status"], second["replay_of_step"]) == ("succeeded", None)


@then("the second step's provenance names the first step in cached_from")
def names_source(ctx: dict[str, Any]) -> None:
    """The Step resource's block is the source's plus ``cached_from``."""
    first, second = ctx["steps"][0], ctx["steps"][1]
    assert second["provenance"] == {**first["provenance"], "cached_from": first["step_id"]}


@then("the second step's provenance has no cached_from")
def not_served(ctx: dict[str, Any]) -> None:
    """The step ran on the engine."""
    assert "cached_from" not in ctx["steps"][1]["provenance"]


@then("the second step added no row to the event log")
def no_rows(ctx: dict[str, Any]) -> None:
    """Counted in the SQLite file: only the first step's frames are there."""
    frames = len([f for f in parse_sse(ctx["raws"][0]) if f["id"] is not None])
    assert table_counts(ctx["env"].db)["events"] == frames


@then(parsers.parse('the second run shows cache "{mode}"'))
def shows_cache(ctx: dict[str, Any], mode: str) -> None:
    """The Run resource shows its cache setting."""
    run = ctx["env"].client.get(f"/v1/runs/{ctx['runs'][1]}", headers=_as("acme")).json()
    assert run["cache"] == mode


@then("the second run's usage equals the first run's usage")
def run_usage(ctx: dict[str, Any]) -> None:
    """The served step's tokens and cost count in its Run."""
    usage = [ctx["env"].client.get(f"/v1/runs/{r}", headers=_as("acme")).json()["usage"]
             for r in ctx["runs"][:2]]
    assert usage[1] == usage[0]
    assert usage[0]["tokens_out"] > 0


@then(parsers.parse("the second step is failed with {code}"))
def failed_with(ctx: dict[str, Any], code: str) -> None:
    """Cut by the budget on the engine, as without the cache."""
    second = ctx["steps"][1]
    assert (second["status"], second["error"]["code"]) == ("failed", code)


@then(parsers.parse('the tool executor "{executor}" ran {n:d} times'))
def tool_ran(ctx: dict[str, Any], executor: str, n: int) -> None:
    """Counted at the executor."""
    assert int(ctx["env"].client.app.state.orch.tools.get(executor).calls) == n


@then("both replays' streams equal the first step's stream byte for byte")
def replays_equal(ctx: dict[str, Any]) -> None:
    """replay serves the source's frames; strict_replay reproduces them token by token."""
    tokens = [[(f["event"], f["data"]) for f in parse_sse(raw) if f["event"] == "token"]
              for raw in ctx["raws"]]
    assert ctx["raws"][2] == ctx["raws"][0]
    assert tokens[3] == tokens[0]
    assert [s["status"] for s in ctx["steps"]] == ["succeeded"] * 4


@then(parsers.parse('the answer is {status:d} {code} naming field "{field}"'))
def refused(ctx: dict[str, Any], status: int, code: str, field: str) -> None:
    """A typed refusal naming the offending field."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"]) == (
        status, code, field)

