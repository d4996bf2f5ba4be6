"""Injected time: sleeps, deadlines, the pool watcher, the log's cache sweep and breaker
timers move only when a test advances the fake clock, so nothing here waits in real time
(POLICY-3000, POLICY-3002, NERVE-4060). Heartbeats: ``test_streams.py``; the disconnect
grace: ``test_disconnect_grace.py``."""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from contracts.events import BreakerState
from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import Step, StepStatus, StepSubmit
from orchestrator_core.clock import FakeClock, SystemClock
from orchestrator_core.config import mock_config
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.pools import Pool, PoolManager
from orchestrator_core.service import Orchestrator
from orchestrator_core.store import SqliteStore
from test_harness.support import TICK, llm_step, settle, until
from worker_adapters.mock import MockEngine, mock_identity
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

pytestmark = pytest.mark.anyio

REAL_TIME_LIMIT_S = 5.0
"""Each test finishes within this much real time although its fake time runs longer."""



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


ROOT = pathlib.Path(__file__).resolve().parents[2]

_DIRECT_TIMERS = {
    "anyio": {"sleep", "sleep_until", "move_on_after", "fail_after", "current_time"},
    "time": {"time", "monotonic", "perf_counter", "sleep", "time_ns", "monotonic_ns"},
    "asyncio": {"sleep", "wait_for", "timeout", "timeout_at"},
}


def direct_timers(package: str, *, root: pathlib.Path = ROOT,
                  exempt: tuple[str, ...] = ("orchestrator_core/clock.py",)) -> list[str]:
    """``path:line uses name`` for every use of a real-time function of ``anyio``,
    ``time`` or ``asyncio``, and of an event loop's own timers, in ``package``."""
    out = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.attr in _DIRECT_TIMERS.get(node.value.id, ()):
                out.append(f"{rel}:{node.lineno} uses {node.value.id}.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and node.module in _DIRECT_TIMERS:
                out += [f"{rel}:{node.lineno} uses {node.module}.{a.name}"
                        for a in node.names if a.name in _DIRECT_TIMERS[node.module]]
            elif isinstance(node, ast.Attribute) \
                    and node.attr in ("call_later", "call_at", "time") \
                    and "loop" in ast.unparse(node.value).lower():
                out.append(f"{rel}:{node.lineno} uses {ast.unparse(node)}")
    return sorted(out, key=lambda v: (v.split(" ")[0].rsplit(":", 1)[0],
                                      int(v.split(" ")[0].rsplit(":", 1)[1]), v))


class TestNoTimerBypassesTheClock:
    """The core and the server ask the injected clock for every timer [NERVE-4060]."""

    def test_only_the_group_commit_window_runs_on_real_time(self) -> None:
        """Outside ``clock.py``, the one real-time wait of the server is the event log's
        group-commit window (``commit_interval_ms``); the Python clients, which run in the
        caller's process, take their retry wait as a ``sleep=`` argument whose default is
        real time [NERVE-4112]."""
        found = [v for package in ("orchestrator_core", "orchestratord")
                 for v in direct_timers(package)]
        assert [re.sub(r":\d+ ", " ", v) for v in found] == [
            "orchestrator_core/eventlog.py uses anyio.sleep",
            "orchestratord/client_async.py uses anyio.sleep",
            "orchestratord/client_sync.py uses time.sleep"]

    def test_the_check_reports_each_kind_of_direct_timer(self, tmp_path: pathlib.Path) -> None:
        """Module timers, imported timer functions and a loop's own timers are listed."""
        pkg = tmp_path / "orchestratord"
        pkg.mkdir()
        (pkg / "bad.py").write_text(
            "import anyio, asyncio, time\n"
            "from time import monotonic\n"
            "async def f(loop):\n"
            "    with anyio.move_on_after(1):\n        await asyncio.sleep(time.time())\n"
            "    loop.call_later(1, print)\n"
            "    asyncio.get_running_loop().time()\n")
        assert direct_timers("orchestratord", root=tmp_path) == [
            "orchestratord/bad.py:2 uses time.monotonic",
            "orchestratord/bad.py:4 uses anyio.move_on_after",
            "orchestratord/bad.py:5 uses asyncio.sleep",
            "orchestratord/bad.py:5 uses time.time",
            "orchestratord/bad.py:6 uses loop.call_later",
            "orchestratord/bad.py:7 uses asyncio.get_running_loop().time",
        ]


class TestFakeClockTimers:
    """``call_at`` timers (what a stream's heartbeat uses) fire from ``advance``."""

    def test_a_timer_fires_when_time_reaches_it_and_may_rearm(self) -> None:
        """A timer for 10 s is quiet a tick before and fires at 10 s; its callback arms
        the next one, for 20 s."""
        clock = FakeClock()
        fired: list[float] = []

        def beat() -> None:
            fired.append(clock.monotonic())
            clock.call_at(clock.monotonic() + 10.0, beat)

        clock.call_at(10.0, beat)
        clock.advance(10.0 - TICK)
        assert (fired, clock.deadlines) == ([], [10.0])
        clock.advance(TICK)
        assert (fired, clock.deadlines) == ([10.0], [20.0])

    def test_a_cancelled_timer_never_fires(self) -> None:
        """cancel disarms the timer, and cancelling again changes nothing."""
        clock = FakeClock()
        fired: list[str] = []
        timer = clock.call_at(1.0, lambda: fired.append("late"))
        timer.cancel()
        timer.cancel()
        clock.advance(5.0)
        assert (fired, clock.pending) == ([], 0)

    async def test_the_system_clock_calls_back_on_the_event_loop(self) -> None:
        """A system-clock timer whose time has come runs on the running loop."""
        clock = SystemClock()
        fired = anyio.Event()
        clock.call_at(clock.monotonic(), fired.set)
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            await fired.wait()


async def test_the_pool_watcher_looks_at_each_interval_of_the_injected_clock(
        tmp_path: pathlib.Path) -> None:
    """A replica whose process died is restarted when the fake clock reaches the
    watcher's next 1 s look, not a tick before [PLACE-5002] [NERVE-4060]."""

    class Dead:
        url, pid = "http://127.0.0.1:1", None

        def alive(self) -> bool:
            return False

        async def stop(self) -> None:
            return None

    clock = FakeClock()
    pm = PoolManager(mock_config(data_dir=str(tmp_path), replicas=1), tmp_path,
                     default_drivers(), clock)
    with anyio.fail_after(REAL_TIME_LIMIT_S):
        await pm.start()
        (rep,) = pm.all_replicas()
        rep.process = Dead()
        async with anyio.create_task_group() as tg:
            tg.start_soon(pm.watch, 1.0)
            await until(lambda: clock.deadlines == [1.0])
            clock.advance(1.0 - TICK)
            await settle()
            assert rep.restarts == 0
            clock.advance(TICK)
            await settle()
            tg.cancel_scope.cancel()
        await pm.stop()
    assert (rep.restarts, rep.process is None) == (1, True)


async def test_a_finished_step_leaves_the_log_cache_when_the_clock_passes_its_linger(
        store: SqliteStore) -> None:
    """The log's sweep runs on the injected clock: a Step finished at 0 s is still cached
    at 29 s of a 30 s linger and gone at 30 s [STREAM-2000] [NERVE-4060]."""
    clock = FakeClock()
    log = EventLog(store, clock, Metrics(CollectorRegistry()), linger_s=30.0)
    log.open("s", "r")
    log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
    with anyio.fail_after(REAL_TIME_LIMIT_S):
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.run_flusher)
            await until(lambda: clock.deadlines == [1.0])
            clock.advance(29.0)
            await settle()
            assert log.run_of("s") == "r"
            clock.advance(1.0)
            await settle()
            tg.cancel_scope.cancel()
    assert log.run_of("s") is None


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
    """Once the step waits on the clock until 60 s: still running at 59.999 s, terminal at
    60 s (the pool watcher and the log's sweep wait on the same clock)."""
    await until(lambda: 60.0 in clock.deadlines)
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
