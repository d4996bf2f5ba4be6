"""The disconnect grace on the injected clock: when a Step's last reader leaves, the Step is
cancelled once ``disconnect_grace_ms`` of the server's clock has passed since that
departure, not a moment before, unless a reader is back (STREAM-2002) [NERVE-4060]."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest

from contracts.errors import ErrorEnvelope
from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import StepStatus, StepSubmit
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import mock_config
from orchestrator_core.service import Orchestrator
from orchestrator_core.streams import StepStream
from test_harness.support import TICK, llm_step, settle, until
from worker_adapters.mock import MockEngine
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

pytestmark = pytest.mark.anyio

REAL_TIME_LIMIT_S = 5.0
"""Each test finishes within this much real time although its fake time runs longer."""


class _Reader:
    """One SSE reader of a Step: pumps its stream in a task until it hangs up."""

    def __init__(self, stream: StepStream) -> None:
        self.stream = stream
        self.chunks: list[bytes] = []
        self.done = anyio.Event()

    async def read(self) -> None:
        async def write(chunk: bytes) -> None:
            self.chunks.append(chunk)

        try:
            await self.stream.pump(write)
        finally:
            self.done.set()

    async def leave(self) -> None:
        """Disconnect, and wait until the server noticed."""
        self.stream.hang_up()
        await self.done.wait()


NewReader = Callable[[], Awaitable[_Reader]]
"""Opens one more reader of the Step and returns once it is subscribed."""


class TestDisconnectGrace:
    """When a Step's last reader leaves, the Step is cancelled once ``disconnect_grace_ms``
    of the injected clock has passed since that departure, unless a reader is back
    (STREAM-2002) [NERVE-4060]."""

    GRACE_S = 1.0

    @asynccontextmanager
    async def _step(self, tmp_path: pathlib.Path, clock: FakeClock,
                    cancel_on_disconnect: bool | None = None,
                    ) -> AsyncIterator[tuple[Orchestrator, str, NewReader]]:
        """A running llm_call whose engine never answers, and a way to add readers."""

        async def stalls(_request: Any) -> AsyncIterator[Any]:
            await anyio.sleep_forever()
            yield None  # pragma: no cover

        drivers = default_drivers(mock_factory=lambda _pc, _i: MockEngine(stalls))
        cfg = msgspec.structs.replace(mock_config(data_dir=str(tmp_path / "data")),
                                      disconnect_grace_ms=int(self.GRACE_S * 1000))
        async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry,
                                        clock=clock) as orch, \
                anyio.create_task_group() as tg:
            flow, _ = orch.create_flow(FlowCreate(ast_ir={"grace": True}))
            run = orch.create_run(flow.flow_id, RunCreate(
                seed=7, cancel_on_disconnect=cancel_on_disconnect))
            step, _ = await orch.submit_step(run.run_id, msgspec.convert(llm_step("d-1"),
                                                                   StepSubmit))
            await until(lambda: orch.get_step(step.step_id).status is StepStatus.RUNNING)

            async def reader() -> _Reader:
                before = orch.log.subscribers(step.step_id)
                r = _Reader(orch.open_stream(step.step_id, None))
                tg.start_soon(r.read)
                await until(lambda: orch.log.subscribers(step.step_id) == before + 1)
                return r

            yield orch, step.step_id, reader
            tg.cancel_scope.cancel()

    @staticmethod
    def _error(orch: Orchestrator, step_id: str) -> tuple[StepStatus, ErrorEnvelope | None]:
        done = orch.get_step(step_id)
        return done.status, done.error

    async def test_the_step_is_cancelled_exactly_when_the_grace_has_passed(
            self, tmp_path: pathlib.Path) -> None:
        """The last reader leaves at 0.25 s: the Step still runs a tick before 1.25 s
        and is cancelled at 1.25 s, "every reader disconnected"."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with self._step(tmp_path, clock) as (orch, step_id, reader):
                first = await reader()
                clock.advance(0.25)
                await first.leave()
                await until(lambda: 1.25 in clock.deadlines)
                clock.advance(self.GRACE_S - TICK)
                await settle()
                assert orch.get_step(step_id).status is StepStatus.RUNNING
                clock.advance(TICK)
                await until(lambda: orch.get_step(step_id).status.terminal)
                status, error = self._error(orch, step_id)
        assert status is StepStatus.CANCELLED
        assert error is not None
        assert (error.code, error.message) == ("CANCELLED", "every reader disconnected")

    async def test_a_reader_back_within_the_grace_keeps_the_step_running(
            self, tmp_path: pathlib.Path) -> None:
        """The last reader leaves at 0.25 s and another arrives at 0.75 s: at 10 s the
        Step still runs, and the new reader has had its keep-alives."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with self._step(tmp_path, clock) as (orch, step_id, reader):
                first = await reader()
                clock.advance(0.25)
                await first.leave()
                clock.advance(0.5)
                second = await reader()
                for _ in range(37):
                    clock.advance(0.25)
                    await settle(5)
                await settle()
                assert (clock.monotonic(), orch.get_step(step_id).status) == (
                    10.0, StepStatus.RUNNING)
                assert second.chunks.count(b": keep-alive\n\n") == 4
                orch.cancel_step(step_id)

    async def test_a_reader_who_comes_back_and_leaves_again_gets_a_whole_grace(
            self, tmp_path: pathlib.Path) -> None:
        """Readers leave at 0.25 s and, after one came back at 0.5 s, at 0.75 s: the
        grace counts from the last departure, so the Step still runs at 1.25 s and a
        tick before 1.75 s, and is cancelled at 1.75 s."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with self._step(tmp_path, clock) as (orch, step_id, reader):
                first = await reader()
                clock.advance(0.25)
                await first.leave()
                clock.advance(0.25)
                second = await reader()
                clock.advance(0.25)
                await second.leave()
                await until(lambda: 1.75 in clock.deadlines)
                clock.advance(0.5)
                await settle()
                assert orch.get_step(step_id).status is StepStatus.RUNNING
                clock.advance(0.5 - TICK)
                await settle()
                assert orch.get_step(step_id).status is StepStatus.RUNNING
                clock.advance(TICK)
                await until(lambda: orch.get_step(step_id).status.terminal)
                status, error = self._error(orch, step_id)
        assert status is StepStatus.CANCELLED
        assert error is not None
        assert (error.code, error.message) == ("CANCELLED", "every reader disconnected")

    async def test_a_run_that_opts_out_keeps_its_step_running_past_the_grace(
            self, tmp_path: pathlib.Path) -> None:
        """With the Run's ``cancel_on_disconnect: false``, the Step whose last reader left
        at 0.25 s still runs at 60 s, and no grace timer was ever armed."""
        clock = FakeClock()
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with self._step(tmp_path, clock, cancel_on_disconnect=False) as (
                    orch, step_id, reader):
                first = await reader()
                clock.advance(0.25)
                await first.leave()
                await settle()
                assert 1.25 not in clock.deadlines
                for _ in range(60):
                    clock.advance(1.0)
                    await settle(5)
                assert (clock.monotonic(), orch.get_step(step_id).status) == (
                    60.25, StepStatus.RUNNING)
