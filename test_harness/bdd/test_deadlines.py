"""The wall-clock budget of every Step type, on the fake clock (POLICY-3005, NERVE-4020).

The orchestrator runs in a blocking portal (its own event loop in a thread) with a
:class:`FakeClock`; each step moves the clock or acts through the portal, so a 500 ms
budget ends at exactly 500 ms of fake time and no scenario waits in real time.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.errors import OrchestratorError
from contracts.flows import FlowCreate
from contracts.pools import ToolExecutorInfo
from contracts.runs import RunCreate
from contracts.steps import Step, StepSubmit
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import ServerConfig
from orchestrator_core.service import Orchestrator
from worker_adapters.base import ToolExecutorConfig, ToolExecutors, ToolRunner
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

scenarios("deadlines.feature")

REAL_TIME_LIMIT_S = 5.0
"""Each wait for the server finishes within this much real time."""


class _NeverAnswers:
    """A tool executor that waits until it is cancelled."""

    name = "slow"

    async def call(self, args: dict[str, Any]) -> Any:
        await anyio.sleep_forever()


class _Tools:
    """The built-in executors plus ``slow``."""

    def __init__(self, configs: Mapping[str, ToolExecutorConfig] | None) -> None:
        self.builtin = tool_registry(configs)

    def get(self, name: str) -> ToolRunner:
        return _NeverAnswers() if name == "slow" else self.builtin.get(name)

    def catalogue(self) -> list[ToolExecutorInfo]:
        return self.builtin.catalogue()

    async def aclose(self) -> None:
        await self.builtin.aclose()


def _tools(configs: Mapping[str, ToolExecutorConfig] | None) -> ToolExecutors:
    return _Tools(configs)


@dataclass
class World:
    """The running orchestrator, its fake clock and the portal to its loop."""

    portal: BlockingPortal
    orch: Orchestrator
    clock: FakeClock
    root: pathlib.Path

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the orchestrator's loop (awaited when async)."""
        return self.portal.call(fn, *args)

    def until(self, predicate: Callable[[], bool]) -> None:
        """Wait (in real time, briefly) until ``predicate()`` holds on the loop."""
        deadline = time.monotonic() + REAL_TIME_LIMIT_S
        while not self.call(predicate):
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.002)


@pytest.fixture
def world(mock_cfg: ServerConfig) -> Iterator[World]:
    """An orchestrator on the mock engine and a fake clock, in its own event loop."""
    clock = FakeClock()
    root = (pathlib.Path(mock_cfg.data_dir) / "sandboxes" / "default" / "run-1").resolve()
    (root / "out").mkdir(parents=True)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(
            Orchestrator.running(mock_cfg, drivers=default_drivers(), tools=_tools,
                                 clock=clock)) as orch:
        yield World(portal, orch, clock, root)


def _run(world: World, ctx: dict[str, Any], **budgets: Any) -> None:
    """A record Run of the Flow whose fs_policy allows writes of ``out/*.txt``."""
    ctx["run"] = world.call(world.orch.create_run, ctx["flow_id"], msgspec.convert(
        {"seed": 7, "budgets": budgets,
         "fs_policy": {"roots": [str(world.root)], "allow": {"write": ["out/*.txt"]}}},
        RunCreate))


@given(parsers.parse('an orchestrator on the fake clock whose tool "{tool}" never answers'))
def orchestrator(world: World, ctx: dict[str, Any], tool: str) -> None:
    """A Flow declaring the tool on the executor of the same name."""
    flow, _ = world.call(world.orch.create_flow, msgspec.convert(
        {"ast_ir": {"deadlines": 1},
         "tools": [{"name": tool, "executor": tool, "parameters": {"type": "object"}}]},
        FlowCreate))
    ctx.update(flow_id=flow.flow_id, n=0)


@given(parsers.parse('a record run with a sandbox allowing write under "{d}"'))
def sandbox_run(world: World, ctx: dict[str, Any], d: str) -> None:
    """A record Run whose fs_policy allows writes of ``<d>/*.txt``."""
    _run(world, ctx)


@given(parsers.parse("the run's wall budget is {ms:d} ms"))
def run_budget(world: World, ctx: dict[str, Any], ms: int) -> None:
    """A new Run of the Flow with ``budgets.max_wall_ms``."""
    _run(world, ctx, max_wall_ms=ms)


def _body(ctx: dict[str, Any], step: dict[str, Any], max_wall_ms: int | None) -> StepSubmit:
    ctx["n"] += 1
    body = {**step, "client_token": f"d-{ctx['n']}"}
    if max_wall_ms is not None:
        body["budgets"] = {"max_wall_ms": max_wall_ms}
    submit: StepSubmit = msgspec.convert(body, StepSubmit)
    return submit


def _submit(world: World, ctx: dict[str, Any], step: dict[str, Any], max_wall_ms: int | None,
            timers: int) -> None:
    """Submit, then wait until the Step runs and waits on ``timers`` fake-clock timers."""
    body = _body(ctx, step, max_wall_ms)
    background = world.clock.pending  # the pool watcher's and the cache sweep's timers
    ctx["step"], _ = world.call(world.orch.submit_step, ctx["run"].run_id, body)
    step_id = ctx["step"].step_id
    world.until(lambda: world.orch.get_step(step_id).status.value == "running"
                and world.clock.pending == background + timers)


def _submit_then_move(world: World, ctx: dict[str, Any], step: dict[str, Any],
                      max_wall_ms: int | None, ms: int) -> None:
    """Submit and move the clock in the same turn of the loop, before the Step's task
    has run."""
    body = _body(ctx, step, max_wall_ms)

    async def submit() -> Step:
        step, _ = await world.orch.submit_step(ctx["run"].run_id, body)
        world.clock.advance(ms / 1000)
        return step

    ctx["step"] = world.call(submit)


@when(parsers.parse('I call tool "{tool}" with a step budget of {ms:d} ms'))
def call_tool(world: World, ctx: dict[str, Any], tool: str, ms: int) -> None:
    """A tool_call that waits on its executor (one timer: the Step's deadline)."""
    _submit(world, ctx, {"type": "tool_call", "input": {"tool": tool, "args": {}}}, ms, 1)


@when(parsers.parse('I run gate_eval "{expression}" waiting {wait:d} ms with a step budget '
                    'of {ms:d} ms'))
def gate(world: World, ctx: dict[str, Any], expression: str, wait: int, ms: int) -> None:
    """A gate that never passes (two timers: the deadline and the gate's own wait)."""
    _submit(world, ctx, {"type": "gate_eval",
                         "input": {"expression": expression, "wait_ms": wait}}, ms, 2)


@when(parsers.parse('I submit fs_op write "{path}" and the fake clock moves {ms:d} ms before '
                    'it starts'))
def late_write(world: World, ctx: dict[str, Any], path: str, ms: int) -> None:
    """An fs_op whose Run's deadline passes before its task runs."""
    _submit_then_move(world, ctx, {"type": "fs_op", "input": {
        "op": "write", "path": path, "content": "late"}}, None, ms)


@when(parsers.parse("I submit a checkpoint with a step budget of {budget:d} ms and the fake "
                    "clock moves {ms:d} ms before it starts"))
def late_checkpoint(world: World, ctx: dict[str, Any], budget: int, ms: int) -> None:
    """A checkpoint whose own deadline passes before its task runs."""
    _submit_then_move(world, ctx, {"type": "checkpoint", "input": {"snapshot": {"k": 1}}},
                      budget, ms)


@when("I submit a checkpoint")
def checkpoint(world: World, ctx: dict[str, Any]) -> None:
    """A checkpoint Step, its refusal kept."""
    body = _body(ctx, {"type": "checkpoint", "input": {"snapshot": {"k": 1}}}, None)
    try:
        world.call(world.orch.submit_step, ctx["run"].run_id, body)
    except OrchestratorError as err:
        ctx["refused"] = err


@when(parsers.parse("the fake clock moves {ms:d} ms"))
def move(world: World, ms: int) -> None:
    """Advance the fake clock; what it wakes runs before the next step."""
    world.call(world.clock.advance, ms / 1000)
    world.call(anyio.lowlevel.checkpoint)


@then("the step is still running")
def still_running(world: World, ctx: dict[str, Any]) -> None:
    """Not terminal, and no terminal frame."""
    step_id = ctx["step"].step_id
    assert world.call(world.orch.get_step, step_id).status.value == "running"
    assert world.orch.log.is_live(step_id)


def _frames(world: World, step_id: str) -> list[tuple[str, Any]]:
    return [(t, json.loads(d)) for _s, t, d in
            world.call(world.orch.store.read_events, step_id, -1)]


@then(parsers.parse('the step ends DEADLINE_EXCEEDED after the frames "{frames}"'))
def deadline_exceeded(world: World, ctx: dict[str, Any], frames: str) -> None:
    """The Step failed with the typed error, and its log has exactly these frames."""
    step_id = ctx["step"].step_id
    world.until(lambda: world.orch.get_step(step_id).status.terminal)
    step = world.call(world.orch.get_step, step_id)
    logged = _frames(world, step_id)
    assert [t for t, _d in logged] == frames.split()
    error = logged[-1][1]
    assert (step.status.value, error["code"], error["message"], error["retriable"],
            error["data"]) == ("failed", "DEADLINE_EXCEEDED",
                               "the step or run wall-clock budget ran out", False,
                               {"budget": "max_wall_ms"})
    ctx["error"], ctx["done"] = error, step


@then(parsers.parse('its error frame and the step carry the provenance of "{executor}" after '
                    '{ms:d} ms'))
def provenance(world: World, ctx: dict[str, Any], executor: str, ms: int) -> None:
    """The block of a Step that is not an LLM call: no tokens, no cost, what ran, on which
    input, under which policy and prices, for how long (NERVE-4020)."""
    step = ctx["done"]
    expected = {"tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
                "policy_hash": ctx["run"].policy_hash,
                "price_table_version": "local-2026-11-01", "executor": executor,
                "input_hash": step.input_hash, "wall_ms": ms}
    assert ctx["error"]["provenance"] == expected
    assert msgspec.to_builtins(step.provenance) == expected
    assert (step.usage.wall_ms, step.usage.tokens_out, step.usage.cost_usd) == (ms, 0, 0.0)


@then("the sandbox holds no file")
def no_file(world: World) -> None:
    """The write never ran."""
    assert sorted(p.name for p in world.root.rglob("*")) == ["out"]


@then("the run has no checkpoint")
def no_checkpoint(world: World, ctx: dict[str, Any]) -> None:
    """The checkpoint was never stored."""
    page, _next = world.call(world.orch.checkpoints.list, ctx["run"].run_id, "default")
    assert page == []


@then(parsers.parse("the answer is BUDGET_EXCEEDED {data} and the run has no steps"))
def refused(world: World, ctx: dict[str, Any], data: str) -> None:
    """Refused at admission with 402; nothing stored."""
    err = ctx["refused"]
    assert (err.code.value, err.http_status, err.data) == ("BUDGET_EXCEEDED", 402,
                                                           json.loads(data))
    assert world.call(world.orch.store.list_steps, ctx["run"].run_id) == []
