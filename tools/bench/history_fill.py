"""Offline filling of a store for :mod:`tools.bench.history`: long Runs and a big store.

Filling through HTTP costs a request per Step (447 s for one Run of 10,000 Steps before
NERVE-4042), so the big store is filled with the server stopped, through the store's own
API (:class:`~orchestrator_core.store.SqliteStore`: ``insert_run``, ``insert_step``,
``commit_events``), the way the server writes. The rows are synthetic but valid: each is a
copy of one template Run and one template Step the server itself recorded over HTTP just
before (its input, provenance, usage and every frame, bytes unchanged), under new ids and
client_tokens, with the Step finished (``succeeded``). The server then serves them like
any other: the counters of schema v9 take them in through the store's triggers, and an
older store sums them on each read.
"""

from __future__ import annotations

import math
import pathlib
import sqlite3
import time

import msgspec

from orchestrator_core.canonical import new_id
from orchestrator_core.rows import EventRow, RunRow, StepRow, StepUpdate
from orchestrator_core.store import SqliteStore

__all__ = ["FillPlan", "FillReport", "fill_store"]

_BATCH_STEPS = 256
"""Steps whose frames go in one ``commit_events`` transaction."""


class FillPlan(msgspec.Struct, frozen=True):
    """What to add to the store.

    Attributes:
        long_runs: Steps of each long Run to create, e.g. ``[1000, 10000]``.
        runs_total: Runs the store should hold in the end (the long Runs, the template
            Run and filler Runs; Runs created later over HTTP come on top).
        events_total: frames the store should hold in the end (filler Runs get as many
            template Steps as it takes, spread evenly).
    """

    long_runs: list[int]
    runs_total: int
    events_total: int


class FillReport(msgspec.Struct, frozen=True):
    """What :func:`fill_store` wrote.

    Attributes:
        long_run_ids: the run_id of each long Run, in the order of the plan.
        runs: Runs in the store afterwards.
        steps: Steps in the store afterwards.
        events: frames in the store afterwards.
        frames_per_step: frames of the template Step (each copy has as many).
        seconds: wall time of the fill (s).
    """

    long_run_ids: list[str]
    runs: int
    steps: int
    events: int
    frames_per_step: int
    seconds: float


class _Filler:
    """Copies of one template Step into Runs, committed in batches."""

    def __init__(self, store: SqliteStore, step: StepRow,
                 frames: list[tuple[int, str, bytes]]) -> None:
        self.store = store
        self.step = step
        self.frames = frames
        self.rows: list[EventRow] = []
        self.updates: list[StepUpdate] = []
        self.steps = 0

    def add_steps(self, run_id: str, n: int) -> None:
        """Append ``n`` finished copies of the template Step to a Run."""
        last = self.frames[-1][0]
        for i in range(n):
            step_id = new_id("stp")
            self.store.insert_step(msgspec.structs.replace(
                self.step, step_id=step_id, run_id=run_id, client_token=f"fill-{i}",
                last_seq=-1))
            self.rows += [(step_id, seq, run_id, ftype, data) for seq, ftype, data in
                          self.frames]
            self.updates.append((step_id, {"last_seq": last}))
            self.steps += 1
            if len(self.updates) >= _BATCH_STEPS:
                self.flush()

    def flush(self) -> None:
        """Commit the frames of the Steps added since the last flush."""
        if self.updates:
            self.store.commit_events(self.rows, self.updates)
            self.rows, self.updates = [], []


def _count(db: pathlib.Path) -> dict[str, int]:
    """Rows of runs and steps and the frames of events (a packed row holds several,
    STREAM-2011), read through a connection of its own."""
    con = sqlite3.connect(db)
    try:
        counts = {t: int(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])  # noqa: S608
                  for t in ("runs", "steps")}
        counts["events"] = int(con.execute(
            "SELECT IFNULL(SUM(IFNULL(last_seq, seq) - seq + 1), 0) FROM events").fetchone()[0])
        return counts
    finally:
        con.close()


def _new_run(store: SqliteStore, template: RunRow, created_at: str) -> str:
    run_id = new_id("run")
    store.insert_run(msgspec.structs.replace(template, run_id=run_id, created_at=created_at,
                                             parent_run_id=None, from_checkpoint=None))
    return run_id


def fill_store(db: pathlib.Path, template_run_id: str, template_step_id: str,
               plan: FillPlan) -> FillReport:
    """Add the plan's Runs, Steps and frames to a store whose server is stopped.

    Args:
        db: the store's database file (``<data_dir>/orchestrator.db``).
        template_run_id: a Run the server created, copied for every new Run.
        template_step_id: a finished Step of it, copied (with every frame) for every new
            Step.
        plan: how much to add.

    Returns:
        The long Runs' ids and the store's totals afterwards.

    Raises:
        RuntimeError: the template Run or Step is missing or the Step is unfinished.
    """
    t0 = time.perf_counter()
    store = SqliteStore(db)
    try:
        run, step = store.get_run(template_run_id), store.get_step(template_step_id)
        if run is None or step is None or step.status != "succeeded":
            raise RuntimeError("the template run and succeeded step must exist")
        frames = store.read_events(template_step_id, -1)
        filler = _Filler(store, step, frames)
        long_ids = []
        for n in plan.long_runs:
            long_ids.append(_new_run(store, run, run.created_at))
            filler.add_steps(long_ids[-1], n)
        filler.flush()
        have = _count(db)
        extra_runs = max(0, plan.runs_total - have["runs"])
        extra_steps = max(0, math.ceil((plan.events_total - have["events"]) / len(frames)))
        for i in range(extra_runs):
            share = extra_steps // extra_runs + (i < extra_steps % extra_runs)
            filler.add_steps(_new_run(store, run, run.created_at), share)
        filler.flush()
    finally:
        store.close()
    have = _count(db)
    return FillReport(long_run_ids=long_ids, runs=have["runs"], steps=have["steps"],
                      events=have["events"], frames_per_step=len(frames),
                      seconds=round(time.perf_counter() - t0, 1))
