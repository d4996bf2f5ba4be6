"""Control across processes at the store: a cancel asked of a process that does not run
the Step, a Run's close and a slot given back, each notified at its COMMIT (PG-9107,
PG-9111..PG-9113).

Each "process" is a PgStore of its own on one fresh schema, as in ``test_pg_multi.py``; the
real-process tests are in ``test_harness/integration/test_pg_control_servers.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.clock import SystemClock
from orchestrator_core.pools import Replica
from orchestrator_core.rows import StepRow
from orchestrator_core.store_pg import PgStore

pytestmark = pytest.mark.own_stores  # builds its own PgStores; the PostgreSQL pass adds nothing





Heard = list[tuple[str, str, str]]


async def _listening(store: PgStore, heard: Heard) -> asyncio.Task[None]:
    """Start ``store``'s listener, recording ``("commit"|<verb>, a, b)``; returns once it
    listens."""
    ready = asyncio.Event()
    task = asyncio.create_task(store.listen(
        lambda s, r: heard.append(("commit", s, r)), ready.set, asyncio.sleep,
        lambda verb, arg: heard.append((verb, *arg.split(" ", 1)))))  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 10)
    return task


async def _until(check: Callable[[], bool]) -> None:
    """Return once ``check()`` holds, or after 5 s."""
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)


class TestCancelThroughAnyProcess:
    """A cancel asked of B for a Step A runs is recorded and notified to A."""

    def test_a_cancel_of_a_step_another_process_runs_is_recorded_and_notified(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9111] B's request keeps the reason on A's running Step and A's listener
        hears ``cancel`` with the Step and the reason; A reads it among its cancels
        requested; a request for a Step B owns itself, or a finished one, records nothing."""
        a, b = procs(2)
        a._exec("UPDATE steps SET status = 'running' WHERE step_id = 's'")
        b.insert_step(StepRow(step_id="own", run_id="r", type="llm_call", client_token="o",
                              input="{}", input_hash="i", placement=None, status="running",
                              seed=None, created_at="t"))

        async def main() -> tuple[Heard, list[bool]]:
            heard: Heard = []
            task = await _listening(a, heard)
            asked = [b.request_cancel("s", "step cancelled"),
                     b.request_cancel("own", "step cancelled"),
                     b.request_cancel("nope", "step cancelled")]
            await _until(lambda: bool(heard))
            task.cancel()
            return heard, asked

        heard, asked = asyncio.run(main())
        a._exec("UPDATE steps SET status = 'cancelled' WHERE step_id = 's'")
        assert (heard, asked, b.cancels_requested(), a.cancels_requested(),
                b.request_cancel("s", "step cancelled")) == (
            [("cancel", "s", "step cancelled")], [True, False, False], [], [], False)

    def test_the_owner_reads_the_cancels_recorded_while_it_did_not_listen(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9111] A cancel recorded while A listened to nothing is among A's
        ``cancels_requested`` (read when its listener connects) until the Step ends."""
        a, b = procs(2)
        b.request_cancel("s", "run cancelled")
        before = a.cancels_requested()
        a._exec("UPDATE steps SET status = 'cancelled' WHERE step_id = 's'")
        assert (before, a.cancels_requested()) == ([("s", "run cancelled")], [])


class TestRunCloseNotified:
    """A Run's close wakes the run streams of every process."""

    def test_closing_a_run_notifies_every_listener_with_the_run_and_no_step(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9113] The close's transaction notifies ``" <run_id>"``: B's listener hears
        a commit of Run ``r`` with an empty Step id; closing it again notifies nothing."""
        a, b = procs(2)

        async def main() -> Heard:
            heard: Heard = []
            task = await _listening(b, heard)
            a.close_run("r", "cancelled", "t")
            a.close_run("r", "cancelled", "t")
            await _until(lambda: bool(heard))
            await asyncio.sleep(0.2)
            task.cancel()
            return heard

        assert asyncio.run(main()) == [("commit", "", "r")]


class TestSlotWaitWoken:
    """A Step waiting for a shared slot is woken by the give-back, not by polling."""

    def test_a_waiter_gets_the_slot_promptly_after_the_give_back_with_few_round_trips(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9107] B holds the replica's only slot for 1.5 s; A's waiting Step gets it
        within 0.3 s of B's give-back, having asked the database at most 6 times (once,
        then at each 0.5 s fallback), not once per 20 ms."""
        a, b = procs(2)
        key = "http://replica.invalid/v1"
        held = b.take_slot(key, 1)
        asked = [0]
        take = a.take_slot

        def counted(replica: str, slots: int) -> int | None:
            asked[0] += 1
            return take(replica, slots)

        a.take_slot = counted  # type: ignore[method-assign]
        replica = Replica("remote", 0, 1, CircuitBreaker("remote/r0", SystemClock()))
        replica.gate = (a, key)

        async def main() -> float:
            task = await _listening(a, [])
            waiter = asyncio.create_task(replica.acquire())
            await asyncio.sleep(1.5)
            await asyncio.to_thread(b.give_slot, key, 0)
            given = time.monotonic()
            await asyncio.wait_for(waiter, 5)
            waited = time.monotonic() - given
            task.cancel()
            return waited

        waited = asyncio.run(main())
        assert (held, waited < 0.3, 1 <= asked[0] <= 6, replica.busy) == (0, True, True, 1)

    def test_a_waiter_that_hears_nothing_still_gets_the_slot_at_its_fallback_re_ask(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9107] With no listener (a lost notification), A's waiting Step still gets
        the slot B gave back, at its next re-ask: within 0.5 s and some slack."""
        a, b = procs(2)
        key = "http://replica.invalid/v1"
        b.take_slot(key, 1)
        replica = Replica("remote", 0, 1, CircuitBreaker("remote/r0", SystemClock()))
        replica.gate = (a, key)

        async def main() -> float:
            waiter = asyncio.create_task(replica.acquire())
            await asyncio.sleep(0.2)
            await asyncio.to_thread(b.give_slot, key, 0)
            given = time.monotonic()
            await asyncio.wait_for(waiter, 5)
            return time.monotonic() - given

        assert (asyncio.run(main()) < 0.8, replica.busy) == (True, 1)
