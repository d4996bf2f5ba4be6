"""Injected time: sleeps, deadlines and breaker timers move only when a test advances the
fake clock, so nothing here waits in real time (POLICY-3000, POLICY-3002)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from contracts.events import BreakerState
from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import Step, StepStatus, StepSubmit
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import mock_config
from orchestrator_core.pools import Pool
from orchestrator_core.service import Orchestrator
from test_harness.support import llm_step
from worker_adapters.mock import MockEngine, mock_identity
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

pytestmark = pytest.mark.anyio

REAL_TIME_LIMIT_S = 5.0
"""Each test finishes within this much real time although its fake time runs longer."""


async def until(predicate: Any) -> None:
    """Yield to other tasks until ``predicate()`` holds."""
    while not predicate():
        await anyio.lowlevel.checkpoint()


class TestFakeClockSleep:
    """``FakeClock.sleep`` returns only once the test advances time past its wake time."""

    async def test_a_sleep_wakes_when_time_reaches_it(self) -> None:
        """A 10 s sleep is still asleep at 9.5 s and awake at 10 s."""
        clock = FakeClock()
        woke: list[float] = []

        async def sleeper() -> None:
            await clock.sleep(10.0)
            woke.append(clock.monotonic())

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper)
                await until(lambda: clock.pending == 1)
                clock.advance(9.5)
                await anyio.lowlevel.checkpoint()
                assert woke == []
                clock.advance(0.5)
        assert (woke, clock.pending) == ([10.0], 0)

    async def test_sleepers_wake_in_order_of_their_wake_times(self) -> None:
        """One advance past several wake times wakes them all, earliest first."""
        clock = FakeClock()
        woke: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(name)

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sleeper, "late", 3.0)
                tg.start_soon(sleeper, "early", 1.0)
                tg.start_soon(sleeper, "never", 60.0)
                await until(lambda: clock.pending == 3)
                clock.advance(5.0)
                await until(lambda: len(woke) == 2)
                tg.cancel_scope.cancel()
        assert (woke, clock.pending) == (["early", "late"], 0)

    async def test_a_zero_sleep_is_a_checkpoint(self) -> None:
        """sleep(0) returns without time moving."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            await clock.sleep(0)
        assert (clock.monotonic(), clock.pending) == (0.0, 0)

    def test_time_does_not_go_back(self) -> None:
        """advance refuses a negative step."""
        with pytest.raises(ValueError, match="cannot advance a clock by -1 s"):
            FakeClock().advance(-1)


class TestFakeClockMoveOnAfter:
    """``FakeClock.move_on_after`` cancels its body when time reaches the deadline."""

    async def test_the_body_is_cancelled_at_the_deadline(self) -> None:
        """A body blocked forever ends when the clock passes 2 s; cancelled_caught is set."""
        clock = FakeClock()
        scopes: list[anyio.CancelScope] = []

        async def body() -> None:
            with clock.move_on_after(2.0) as scope:
                scopes.append(scope)
                await anyio.sleep_forever()

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(body)
                await until(lambda: clock.pending == 1)
                clock.advance(2.0)
        assert (scopes[0].cancelled_caught, clock.pending) == (True, 0)

    async def test_a_body_that_finishes_in_time_is_not_cancelled(self) -> None:
        """Leaving the scope early forgets its timer."""
        clock = FakeClock()
        with clock.move_on_after(2.0) as scope:
            await anyio.lowlevel.checkpoint()
        clock.advance(5.0)
        assert (scope.cancelled_caught, clock.pending) == (False, 0)

    async def test_a_deadline_already_past_cancels_at_once(self) -> None:
        """move_on_after(0) cancels the body at its first checkpoint."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            with clock.move_on_after(0) as scope:
                await anyio.sleep_forever()
        assert scope.cancelled_caught is True


def test_a_replica_breaker_half_opens_when_the_fake_clock_passes_the_reset() -> None:
    """A replica's breaker runs on the pool's clock: open after 3 failures, still open at
    4.999 s, half-open (one probe) at 5 s [POLICY-3002]."""
    clock = FakeClock()
    pc = mock_config().pools[0]
    rep = Pool(pc, mock_identity(), clock, breaker_failures=3,
               breaker_reset_s=5.0).replicas[0]
    for _ in range(3):
        rep.breaker.failure("engine error")
    assert (rep.breaker.state, rep.breaker.allow()) == (BreakerState.OPEN, (False, None))
    clock.advance(4.999)
    assert rep.breaker.allow() == (False, None)
    clock.advance(0.001)
    allowed, moved = rep.breaker.allow()
    assert (allowed, moved is not None and moved.to_state, rep.breaker.state) == \
        (True, BreakerState.HALF_OPEN, BreakerState.HALF_OPEN)


async def _past_60_s(orch: Orchestrator, clock: FakeClock, step_id: str) -> Step:
    """Once the step waits on the clock: still running at 59.999 s, terminal at 60 s."""
    await until(lambda: clock.pending == 1)
    clock.advance(59.999)
    await anyio.lowlevel.checkpoint()
    assert not orch.get_step(step_id).status.terminal
    clock.advance(0.001)
    await until(lambda: orch.get_step(step_id).status.terminal)
    return orch.get_step(step_id)


async def test_a_step_past_its_wall_budget_on_the_fake_clock_is_deadline_exceeded(
        tmp_path: pathlib.Path) -> None:
    """An llm_call whose engine never answers ends DEADLINE_EXCEEDED once the fake clock
    passes its 60 s max_wall_ms, and not a moment before, in well under 5 s of real
    time [POLICY-3000]."""

    async def stalls(_request: Any) -> AsyncIterator[Any]:
        await anyio.sleep_forever()
        yield None  # pragma: no cover

    clock = FakeClock()
    drivers = default_drivers(mock_factory=lambda _pc, _i: MockEngine(stalls))
    cfg = mock_config(data_dir=str(tmp_path / "data"))
    with anyio.fail_after(REAL_TIME_LIMIT_S):
        async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry,
                                        clock=clock) as orch:
            flow, _ = orch.create_flow(FlowCreate(ast_ir={"demo": True}))
            run = orch.create_run(flow.flow_id, RunCreate(seed=7))
            body = msgspec.convert({**llm_step("w-1"), "budgets": {"max_wall_ms": 60_000}},
                                   StepSubmit)
            step, _ = await orch.submit_step(run.run_id, body)
            done = await _past_60_s(orch, clock, step.step_id)
    assert done.status is StepStatus.FAILED
    assert done.error is not None
    assert (done.error.code, done.error.data) == ("DEADLINE_EXCEEDED",
                                                  {"budget": "max_wall_ms"})


async def test_a_gate_wait_ends_when_the_fake_clock_passes_wait_ms(
        tmp_path: pathlib.Path) -> None:
    """A gate_eval that never passes waits its 60 s wait_ms on the fake clock, then
    succeeds with ``passed: false``, in well under 5 s of real time [NERVE-4006]."""
    clock = FakeClock()
    cfg = mock_config(data_dir=str(tmp_path / "data"))
    with anyio.fail_after(REAL_TIME_LIMIT_S):
        async with Orchestrator.running(cfg, drivers=default_drivers(), tools=tool_registry,
                                        clock=clock) as orch:
            flow, _ = orch.create_flow(FlowCreate(ast_ir={"demo": True}))
            run = orch.create_run(flow.flow_id, RunCreate(seed=7))
            body = msgspec.convert({"type": "gate_eval", "client_token": "g-1",
                                    "input": {"expression": "by_type.nothing",
                                              "wait_ms": 60_000}}, StepSubmit)
            step, _ = await orch.submit_step(run.run_id, body)
            done = await _past_60_s(orch, clock, step.step_id)
            end = [msgspec.json.decode(d) for _s, t, d in
                   orch.store.read_events(step.step_id, -1) if t == "end"]
    assert done.status is StepStatus.SUCCEEDED
    assert end[0]["output"] == {"passed": False, "value": None, "facts_seen": [],
                                "high_water": -1}
