"""No per-Step cost that grows with the Run or the store: usage counters kept with every
write, indexed lookups, and O(1) event-log bookkeeping (NERVE-4042)."""

from __future__ import annotations

import datetime as dt
import functools
import pathlib
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from contracts.flows import FlowCreate
from contracts.runs import RunCreate, RunMode
from contracts.steps import StepSubmit
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import mock_config
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.rows import RunUsage, StepRow
from orchestrator_core.service import Orchestrator
from orchestrator_core.store import SqliteStore
from test_harness.support import llm_step, settle, until
from test_harness.unit.conftest import RUN, seeded
from worker_adapters.base import CompletionRequest, StreamItem
from worker_adapters.mock import MockEngine, default_handler
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

REAL_TIME_LIMIT_S = 10.0


def _step(step_id: str, run_id: str = "r", status: str = "succeeded", *,
          step_type: str = "llm_call", tokens_in: int = 0, tokens_out: int = 0,
          cost_usd: float = 0.0, wall_ms: int = 0) -> StepRow:
    return StepRow(step_id=step_id, run_id=run_id, type=step_type,
                   client_token=f"c-{step_id}", input="{}", input_hash="i", placement=None,
                   status=status, seed=None, created_at="t", tokens_in=tokens_in,
                   tokens_out=tokens_out, cost_usd=cost_usd, wall_ms=wall_ms)


def _counters(db: pathlib.Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The two counter tables as stored, read through a separate connection."""
    con = sqlite3.connect(db)
    try:
        return (con.execute("SELECT * FROM run_usage ORDER BY run_id").fetchall(),
                con.execute("SELECT * FROM run_step_counts WHERE n != 0"
                            " ORDER BY run_id, status").fetchall())
    finally:
        con.close()


def _vm_ops(store: SqliteStore, call: Callable[[], object]) -> int:
    """SQLite virtual-machine instructions a store call executes (a measure of its work
    that does not depend on the machine's speed)."""
    ops = 0

    def tick() -> int:
        nonlocal ops
        ops += 1
        return 0

    store._conn.set_progress_handler(tick, 1)
    try:
        call()
    finally:
        store._conn.set_progress_handler(None, 1)
    return ops


class TestUsageCounters:
    """A Run's usage and Step counts are counters kept by the write that changes them."""

    def test_counters_follow_inserts_status_changes_and_usage_updates(
            self, store: SqliteStore) -> None:
        """[NERVE-4042] Steps inserted in any status, moved through running to four
        terminal statuses, and one re-costed: the counters equal the recount."""
        for step_id in ("a", "b", "c"):
            assert store.insert_step(_step(step_id, status="queued"))
        assert store.insert_step(_step("d", tokens_in=5, tokens_out=7, cost_usd=0.25,
                                       wall_ms=40))
        store.commit_events([("s", 0, "r", "started", b"{}")],
                            [("s", {"status": "running"}), ("a", {"status": "running"})])
        store.commit_events([("s", 1, "r", "end", b"{}")], [
            ("s", {"status": "succeeded", "tokens_in": 3, "tokens_out": 4, "cost_usd": 0.5,
                   "wall_ms": 10}),
            ("a", {"status": "failed", "tokens_in": 2, "wall_ms": 1}),
            ("b", {"status": "cancelled"}),
            ("c", {"status": "interrupted", "tokens_out": 1})])
        store.commit_events([], [("s", {"cost_usd": 0.75})])
        usage = RunUsage(tokens_in=10, tokens_out=12, cost_usd=1.0, wall_ms=51, counts={
            "cancelled": 1, "failed": 1, "interrupted": 1, "succeeded": 2})
        assert (store.run_usage("r"), store.recount_usage("r")) == (usage, usage)
        assert _counters(store.path) == (
            [("r", 10, 12, 1.0, 51)],
            [("r", "cancelled", 1), ("r", "failed", 1), ("r", "interrupted", 1),
             ("r", "succeeded", 2)])

    def test_a_repeated_client_token_counts_nothing(self, store: SqliteStore) -> None:
        """[NERVE-4042] An insert refused by the idempotency key leaves the counters."""
        assert not store.insert_step(msgspec.structs.replace(
            _step("other", status="succeeded", tokens_out=9), client_token="c"))
        assert store.run_usage("r") == RunUsage(tokens_in=0, tokens_out=0, cost_usd=0.0,
                                                wall_ms=0, counts={"queued": 1})

    def test_a_run_without_steps_has_zero_usage(self, store: SqliteStore) -> None:
        """[NERVE-4042] No counter row reads as zeros and no counts."""
        store.insert_run(msgspec.structs.replace(RUN, run_id="empty"))
        assert store.run_usage("empty") == RunUsage(tokens_in=0, tokens_out=0,
                                                    cost_usd=0.0, wall_ms=0, counts={})

    @pytest.mark.sqlite_only  # a SQLite file migrating (PG-9053)
    def test_a_v8_store_is_backfilled_when_it_migrates(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4042] [NERVE-4041] Steps a v8 store holds, in two Runs and several
        statuses, are summed into the v9 counters, which then follow new writes."""
        old = seeded(SqliteStore(tmp_path / "o.db", migrate_to=8))
        old.insert_run(msgspec.structs.replace(RUN, run_id="r2"))
        old.insert_step(_step("t", tokens_in=1, tokens_out=2, cost_usd=0.5, wall_ms=3))
        old.insert_step(_step("u", "r2", "failed", tokens_in=4, wall_ms=6))
        old.insert_step(_step("v", "r2", "succeeded", tokens_out=8, cost_usd=0.25))
        old.close()
        new = SqliteStore(tmp_path / "o.db")
        assert _counters(tmp_path / "o.db") == (
            [("r", 1, 2, 0.5, 3), ("r2", 4, 8, 0.25, 6)],
            [("r", "queued", 1), ("r", "succeeded", 1), ("r2", "failed", 1),
             ("r2", "succeeded", 1)])
        new.commit_events([("s", 0, "r", "end", b"{}")],
                          [("s", {"status": "succeeded", "tokens_out": 10})])
        assert new.run_usage("r") == RunUsage(tokens_in=1, tokens_out=12, cost_usd=0.5,
                                              wall_ms=3, counts={"succeeded": 2})
        assert new.integrity()["usage_mismatch"] == 0
        new.close()

    @pytest.mark.sqlite_only  # SQLite rows rewritten by hand (PG-9053)
    def test_integrity_counts_a_run_whose_counters_drifted(self, store: SqliteStore) -> None:
        """[NERVE-4042] A counter that disagrees with the recount (written behind the
        triggers' back) is one mismatched Run; a negative count is one too."""
        store.insert_run(msgspec.structs.replace(RUN, run_id="r2"))
        assert store.integrity() == {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0,
                                     "broken_references": 0, "usage_mismatch": 0}
        store._conn.execute("UPDATE run_usage SET tokens_out = 1 WHERE run_id = 'r'")
        store._conn.execute("INSERT INTO run_step_counts VALUES ('r2', 'queued', -1)")
        assert store.integrity()["usage_mismatch"] == 2


@pytest.mark.sqlite_only  # SQLite's VM steps (PG-9053)
class TestIndexedLookups:
    """What a Step and a Run read costs the same in a Run of 1 Step or of 3,000, and in a
    store of 1 Run or of 3,000 (NERVE-4042)."""

    @pytest.fixture
    def big(self, store: SqliteStore) -> SqliteStore:
        """Run ``r`` (a queued llm_call and an fs_op), run ``big`` (a queued llm_call,
        an fs_op, then 2,998 llm_calls) and 3,000 Runs more, forked from nothing."""
        store._conn.execute("BEGIN")
        store.insert_step(_step("fs-r", "r", step_type="fs_op"))
        store.insert_run(msgspec.structs.replace(RUN, run_id="big"))
        store.insert_step(_step("q-big", "big", "queued"))
        store.insert_step(_step("fs-big", "big", step_type="fs_op"))
        for i in range(2998):
            store.insert_step(_step(f"b{i}", "big", tokens_out=1))
        for i in range(3000):
            store.insert_run(msgspec.structs.replace(RUN, run_id=f"x{i}"))
        store._conn.execute("COMMIT")
        return store

    @pytest.mark.parametrize("read", ["run_usage", "child_runs", "last_fs_op",
                                      "steps_high_water", "insert_step", "finish_step"])
    def test_a_read_or_write_does_the_same_work_in_a_long_run(
            self, big: SqliteStore, read: str) -> None:
        """[NERVE-4042] The store executes as many SQLite instructions for the Run of
        3,000 Steps as for the Run of 1 (within 2, the end of an index range)."""
        calls: dict[str, Callable[[str], object]] = {
            "run_usage": big.run_usage,
            "child_runs": big.child_runs,
            "last_fs_op": lambda run_id: big.last_step(run_id, "fs_op", "succeeded"),
            "steps_high_water": big.steps_high_water,
            "insert_step": lambda run_id: big.insert_step(_step("new-" + run_id, run_id)),
            "finish_step": lambda run_id: big.commit_events(
                [("new-" + run_id, 0, run_id, "end", b"{}")],
                [("new-" + run_id, {"status": "failed", "tokens_out": 2})]),
        }
        if read == "finish_step":
            for run_id in ("r", "big"):
                big.insert_step(_step("new-" + run_id, run_id, "running"))
        call = calls[read]
        small, long = (_vm_ops(big, functools.partial(call, run_id)) for run_id in ("r", "big"))
        assert abs(long - small) <= 2, (small, long)
        assert big.integrity()["usage_mismatch"] == 0


class TestStepIds:
    """A Step id grows with time, so a Step's row and frames are appended next to the
    latest ones, not at a random place in a big index (NERVE-4042)."""

    @pytest.mark.anyio
    async def test_step_ids_start_with_their_second_and_sort_in_submission_order(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4042] [NERVE-4000] Steps submitted at 1,700,000,000 s, one second and
        4,096 seconds later have ids ``stp_`` + the hex of that second + 16 random hex
        digits, in that order."""
        clock = FakeClock()
        cfg = mock_config(data_dir=str(tmp_path / "data"))
        ids = []
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with Orchestrator.running(cfg, drivers=default_drivers(),
                                            tools=tool_registry, clock=clock) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"ids": 1}))
                run = orch.create_run(flow.flow_id, RunCreate(seed=7))
                for token, later in (("a", 0.0), ("b", 1.0), ("c", 4095.0)):
                    clock.advance(later)
                    body = msgspec.convert(llm_step(token), StepSubmit)
                    ids.append((await orch.submit_step(run.run_id, body))[0].step_id)
                for step_id in ids:
                    orch.cancel_step(step_id)
        assert [(i[:12], re.fullmatch(r"[0-9a-f]{16}", i[12:]) is not None) for i in ids] == [
            ("stp_6553f100", True), ("stp_6553f101", True), ("stp_65540100", True)]
        assert sorted(ids) == ids


async def _mixed(req: CompletionRequest) -> AsyncIterator[StreamItem]:
    """``ok``: 5 tokens and a finish; ``cut``: 2 tokens and no finish; ``stall``: one
    token, then waits until cancelled."""
    if req.prompt == "stall":
        async for item in default_handler(fail_after=1)(req):
            yield item
        await anyio.sleep_forever()
    handler = default_handler(length=5, fail_after=2 if req.prompt == "cut" else None)
    async for item in handler(req):
        yield item


def _ended(orch: Orchestrator, step_id: str) -> bool:
    return orch.get_step(step_id).status.terminal


def _run_views(orch: Orchestrator, run_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    run = orch.get_run(run_id)
    return msgspec.to_builtins(run.usage), run.steps


class TestServiceUsage:
    """The Run resource reads the counters; they equal a recount after every kind of
    ending (NERVE-4042)."""

    @pytest.mark.anyio
    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    async def test_usage_equals_the_recount_after_outcomes_replay_and_recovery(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4042] [NERVE-4040] A record Run with a succeeded, an interrupted and a
        cancelled llm_call, its replay, and a Step a crash left running that recovery
        closes: each Run's usage is the sum of its Steps' usage, and the store's recount
        agrees."""
        drivers = default_drivers(mock_factory=lambda _pc, _i: MockEngine(_mixed))
        cfg = mock_config(data_dir=str(tmp_path / "data"))
        db = tmp_path / "data" / "orchestrator.db"
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"usage": 1}))
                rec = orch.create_run(flow.flow_id, RunCreate(seed=7))
                ids = []
                for token, prompt in (("a", "ok"), ("b", "cut"), ("c", "stall")):
                    body = msgspec.convert(llm_step(token, prompt), StepSubmit)
                    ids.append((await orch.submit_step(rec.run_id, body))[0].step_id)
                await until(lambda: orch.get_step(ids[1]).status.terminal
                            and orch.get_step(ids[0]).status.terminal
                            and orch.store.max_seq(ids[2]) >= 1)
                orch.cancel_step(ids[2])
                await until(lambda: orch.get_step(ids[2]).status.terminal)
                rep = orch.create_run(flow.flow_id, RunCreate(
                    seed=7, mode=RunMode.REPLAY, replay_of=rec.run_id))
                for token, prompt in (("a", "ok"), ("b", "cut"), ("c", "stall")):
                    body = msgspec.convert(llm_step(token, prompt), StepSubmit)
                    step_id = (await orch.submit_step(rep.run_id, body))[0].step_id
                    await until(functools.partial(_ended, orch, step_id))
                await settle()
                views = {run_id: _run_views(orch, run_id) for run_id in (rec.run_id,
                                                                         rep.run_id)}
                steps = [orch.get_step(s) for s in ids]
        crashed = SqliteStore(db)  # a Step the crash left running, with 2 tokens
        crashed.insert_step(msgspec.structs.replace(
            _step("stp_crashed", rec.run_id, "queued"), input='{"model":"mock-1"}',
            created_at=dt.datetime.now(dt.UTC).isoformat()))
        crashed.commit_events(
            [("stp_crashed", 0, rec.run_id, "started", b"{}"),
             *[("stp_crashed", i, rec.run_id, "token", b"{}") for i in (1, 2)]],
            [("stp_crashed", {"status": "running"})])
        crashed.close()
        async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry) as orch:
            recovered = _run_views(orch, rec.run_id)
            interrupted = orch.get_step("stp_crashed")
        store = SqliteStore(db)
        assert store.integrity()["usage_mismatch"] == 0
        store.close()
        total = {k: sum(getattr(s.usage, k) for s in steps)
                 for k in ("tokens_in", "tokens_out", "wall_ms", "cost_usd")}
        assert [s.status.value for s in steps] == ["succeeded", "interrupted", "cancelled"]
        assert (total["tokens_in"], total["tokens_out"]) == (6, 8)  # prompts 2+2+2; 5+2+1
        assert views[rec.run_id] == (total, {"cancelled": 1, "interrupted": 1,
                                             "succeeded": 1})
        assert views[rep.run_id] == (total, {"cancelled": 1, "interrupted": 1,
                                             "succeeded": 1})
        assert interrupted.usage.tokens_out == 2
        assert recovered == ({**total, "tokens_out": 10,
                              "wall_ms": total["wall_ms"] + interrupted.usage.wall_ms},
                             {"cancelled": 1, "interrupted": 2, "succeeded": 1})


class _Unscanned(dict[str, Any]):
    """The event log's cache, refusing to be walked: a walk is work that grows with
    everything it holds."""

    def _walk(self, *_args: object) -> Iterator[Any]:
        raise AssertionError("the event log walked its whole cache")

    values = items = keys = __iter__ = _walk  # type: ignore[assignment]


def _steps(store: SqliteStore, *step_ids: str) -> None:
    store._conn.execute("BEGIN")
    for step_id in step_ids:
        store.insert_step(_step(step_id, status="queued"))
    store._conn.execute("COMMIT")


class TestEventLogBookkeeping:
    """The event log counts and evicts without walking its cache (NERVE-4042)."""

    def test_the_active_count_is_kept_not_counted(self, store: SqliteStore) -> None:
        """[NERVE-4042] With 1,000 finished Steps cached, opening, finishing and counting
        active Steps never walks the cache."""
        _steps(store, "s2", *(f"f{i}" for i in range(1000)))
        log = EventLog(store, FakeClock(), Metrics(CollectorRegistry()))
        log._live = _Unscanned()
        for i in range(1000):
            log.open(f"f{i}", "r")
            log.finish_recorded(f"f{i}", "end", b"{}", {})
        counts = [log.active()]
        log.open("s", "r")
        log.open("s2", "r")
        counts.append(log.active())
        log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        counts.append(log.active())
        assert counts == [0, 2, 1]

    @pytest.mark.anyio
    async def test_the_sweep_evicts_in_finish_order_and_keeps_a_read_step(
            self, store: SqliteStore) -> None:
        """[NERVE-4042] [STREAM-2000] Steps finished at 0 s and 10 s of a 30 s linger
        leave at 30 s and 40 s; one still read stays until its reader leaves; the sweep
        never walks the cache."""
        _steps(store, "a", "read", "b")
        clock = FakeClock()
        log = EventLog(store, clock, Metrics(CollectorRegistry()), linger_s=30.0)
        log._live = _Unscanned()
        for step_id in ("a", "read"):
            log.open(step_id, "r")
            log.finish_recorded(step_id, "end", b"{}", {})
        sub = log.subscribe("read")
        seen: list[list[str | None]] = []

        def cached() -> list[str | None]:
            return [log.run_of(s) and s for s in ("a", "read", "b")]

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(log.run_flusher)
                await until(lambda: clock.deadlines == [1.0])
                clock.advance(10.0)
                await settle()
                log.open("b", "r")
                log.finish_recorded("b", "end", b"{}", {})
                for step in (19.0, 1.0, 9.0, 1.0):
                    clock.advance(step)
                    await settle()
                    seen.append(cached())
                log.unsubscribe(sub)
                clock.advance(1.0)
                await settle()
                seen.append(cached())
                tg.cancel_scope.cancel()
        assert seen == [["a", "read", "b"], [None, "read", "b"], [None, "read", "b"],
                        [None, "read", None], [None, None, None]]

    def test_a_step_served_by_reference_leaves_the_cache_after_its_linger(
            self, store: SqliteStore) -> None:
        """[NERVE-4042] [NERVE-4025] A Step cached already finished (served by reference)
        is evicted after the linger like a Step that finished here, and is never active."""
        clock = FakeClock()
        log = EventLog(store, clock, Metrics(CollectorRegistry()), linger_s=30.0)
        log.open_served("served", "r", [b"id: 0\n\n"])
        kept = (log.active(), log.run_of("served"))
        clock.advance(29.0)
        log._evict(clock.monotonic())
        at_29 = log.run_of("served")
        clock.advance(1.0)
        log._evict(clock.monotonic())
        assert (kept, at_29, log.run_of("served")) == ((0, "r"), "r", None)
