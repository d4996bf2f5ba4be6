"""The verdicts of the multi-process tools (PG-9120, PG-9121) and the counting mock replica
they share (PG-9122): fast, no PostgreSQL and no server process."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from tools.bench.mock_openai import Concurrency, make_app
from tools.bench.multi import Added, MultiReport, misses
from tools.crash_multi import Tally, judge_log, slot_overcommit

_STEPS = {"sqlite-1": 400.0, "pg-1": 200.0, "pg-2": 210.0, "pg-3": 190.0}


class TestConcurrency:
    """[PG-9122] The mock replica counts the completions it serves at once."""

    @pytest.mark.anyio
    async def test_overlapping_completions_count_together(self) -> None:
        """Three paced completions sent at once are counted three at once, and ``GET
        /stats`` says so once they are answered."""
        app = make_app(chunk_delay_s=0.01)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://mock") as http:
            answers = await asyncio.gather(*(http.post("/v1/completions", json={
                "prompt": f"p {i}", "max_tokens": 3, "stream": True}) for i in range(3)))
            stats = (await http.get("/stats")).json()
        assert ([a.status_code for a in answers], stats) == (
            [200, 200, 200], {"current": 0, "max": 3, "total": 3})

    @pytest.mark.anyio
    async def test_a_client_gone_stops_its_completion_and_its_count(self) -> None:
        """A client that disconnects mid-stream (a process killed with its request in
        flight) stops counting at once, and nothing more is sent to it."""
        counter = Concurrency()
        app = make_app(chunk_delay_s=0.01, counter=counter)
        messages = [{"type": "http.request", "more_body": False,
                     "body": b'{"prompt": "x", "max_tokens": 500, "stream": true}'}]
        gone = asyncio.Event()
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/completions"}
        task = asyncio.ensure_future(app(scope, receive, send))
        await asyncio.sleep(0.05)
        during = counter.snapshot()
        gone.set()
        await asyncio.wait_for(task, 1.0)
        stopped_at = len(sent)
        await asyncio.sleep(0.05)
        assert (during, counter.snapshot(), len(sent) - stopped_at) == (
            {"current": 1, "max": 1, "total": 1}, {"current": 0, "max": 1, "total": 1}, 0)


class TestCrashMultiVerdict:
    """[PG-9120] How the multi-process crash loop judges what it saw."""

    def test_slot_overcommit_is_what_the_replica_served_beyond_its_slots(self) -> None:
        """Three at once on two slots is an overcommit of 1; two or one is none."""
        assert [slot_overcommit(m, 2) for m in (3, 2, 1, 0)] == [1, 0, 0, 0]

    def test_a_complete_log_read_as_written_is_clean(self) -> None:
        """A reader that received the whole log, ending with its one terminal frame,
        counts nothing."""
        log = [(0, "started", "{}"), (1, "token", "a"), (2, "end", "{}")]
        assert judge_log(list(log), log) == (0, 0, 0)

    def test_a_skipped_frame_is_lost_and_breaks_the_ids(self) -> None:
        """A reader that never got frame 1 counts one lost event and one broken id run."""
        log = [(0, "started", "{}"), (1, "token", "a"), (2, "end", "{}")]
        assert judge_log([log[0], log[2]], log) == (1, 1, 0)

    def test_two_terminal_frames_are_two_writers(self) -> None:
        """A log with two terminal frames was written by two owners."""
        log = [(0, "started", "{}"), (1, "error", "INTERRUPTED"), (2, "end", "{}")]
        assert judge_log(list(log), log) == (0, 0, 1)

    def test_a_frame_after_the_terminal_one_is_two_writers_and_lost(self) -> None:
        """A token written after the terminal frame is a second writer, and the log no
        longer ends with its terminal frame."""
        log = [(0, "started", "{}"), (1, "error", "INTERRUPTED"), (2, "token", "b")]
        assert judge_log(list(log), log) == (1, 0, 1)

    def test_failures_name_only_the_nonzero_figures(self) -> None:
        """The exercised counts never fail the loop; any figure above 0 does."""
        clean = Tally(cycles=50, steps=300, kills=50, slots=2, max_concurrent=2)
        bad = Tally(slot_overcommit=1, left_to_dead_owner=2, cycles=50)
        assert (clean.failures(), bad.failures()) == (
            {}, {"left_to_dead_owner": 2, "slot_overcommit": 1})


class TestBenchMultiTargets:
    """[PG-9121] The multi-process bench holds its figures to targets."""

    def _report(self, pg_p50: float = 3.0, pg1: float = 200.0) -> MultiReport:
        return MultiReport(
            delivery_p50_ms=2.0, delivery_p99_ms=9.0, tokens_measured=400,
            steps_per_s={**_STEPS, "pg-1": pg1},
            llm_call_added={"sqlite-1": Added(1.2, 3.0), "pg-1": Added(pg_p50, 8.0)},
            llm_call_requests=100)

    def test_figures_within_their_targets_miss_nothing(self) -> None:
        """Every figure within its target: nothing is missed (the bench exits 0)."""
        assert misses(self._report()) == []

    def test_a_slow_backend_and_a_slow_pg_rate_are_named(self) -> None:
        """The added latency on pg-1 over its target and a pg-1 rate under a quarter of
        sqlite-1's are each one line."""
        assert misses(self._report(pg_p50=6.5, pg1=90.0)) == [
            "added per llm_call on pg-1: +6.5 / +8.0 ms > 5.0 / 15.0",
            "pg-1 90.0 steps/s < 0.25 x sqlite-1 (400.0)"]

    def test_a_backend_not_measured_is_a_miss(self) -> None:
        """A report without the added latency on both backends misses its target."""
        report = MultiReport(delivery_p50_ms=2.0, delivery_p99_ms=9.0, tokens_measured=1,
                             steps_per_s=_STEPS, llm_call_added={"pg-1": Added(3.0, 8.0)})
        assert misses(report) == [
            "added per llm_call measured on ['pg-1'], not on sqlite-1 and pg-1"]
