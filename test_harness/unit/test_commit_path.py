"""The commit path: the group commit's Step updates, WAL checkpoints off the event loop,
the mock engine's yield (STREAM-2000)."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import time

import pytest

from orchestrator_core.rows import StepRow
from orchestrator_core.store import SqliteStore
from orchestrator_core.wal_checkpoints import BACKSTOP_PAGES, WalCheckpointer
from worker_adapters.base import CompletionRequest, Delta
from worker_adapters.mock import MockEngine, default_handler


@pytest.fixture
def two(store: SqliteStore) -> SqliteStore:
    """The seeded store with a second queued Step ``s2`` in run ``r``."""
    store.insert_step(StepRow(step_id="s2", run_id="r", type="llm_call", client_token="c2",
                              input="{}", input_hash="i", placement=None, status="queued",
                              seed=None, created_at="t"))
    return store


def _steps(store: SqliteStore) -> dict[str, tuple[int, str]]:
    rows = (store.get_step(s) for s in ("s", "s2"))
    return {r.step_id: (r.last_seq, r.status) for r in rows if r is not None}


class TestGroupCommitUpdates:
    """``commit_events`` applies a group's cursor updates and final columns together."""

    def test_cursor_updates_and_a_terminal_update_land_in_one_call(
            self, two: SqliteStore) -> None:
        """``last_seq`` of one Step and the final columns of another commit together."""
        two.commit_events(
            [("s", 0, "r", "token", b"{}"), ("s", 1, "r", "token", b"{}"),
             ("s2", 0, "r", "end", b"{}")],
            [("s", {"last_seq": 1}), ("s2", {"last_seq": 0, "status": "succeeded"})])
        assert _steps(two) == {"s": (1, "queued"), "s2": (0, "succeeded")}
        assert [seq for seq, _t, _d in two.read_events("s", -1)] == [0, 1]

    def test_an_update_of_a_column_outside_the_list_stores_nothing(
            self, two: SqliteStore) -> None:
        """A column outside ``STEP_UPDATABLE`` is a ValueError and no frame of the group,
        nor any cursor, is stored."""
        with pytest.raises(ValueError, match=r"^not updatable: \['run_id'\]$"):
            two.commit_events([("s", 0, "r", "token", b"{}")],
                              [("s", {"last_seq": 0}), ("s2", {"run_id": "x"})])
        assert (two.read_events("s", -1), _steps(two)) == (
            [], {"s": (-1, "queued"), "s2": (-1, "queued")})


@pytest.mark.sqlite_only  # SQLite WAL checkpoints (PG-9053)
class TestWalCheckpoints:
    """Checkpoints run in a background thread, not inside a COMMIT of the event loop."""

    def test_the_writer_checkpoints_only_as_a_backstop(self, store: SqliteStore) -> None:
        """The store's connection checkpoints itself only past 10,000 pages of log, and
        its background checkpointer runs until the store is closed."""
        backstop = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        running = store._checkpointer.running
        store.close()
        assert (backstop, BACKSTOP_PAGES, running, store._checkpointer.running) == (
            10_000, 10_000, True, False)

    def test_committed_pages_are_copied_back_by_the_thread(
            self, tmp_path: pathlib.Path) -> None:
        """Pages a writer committed to the log reach the database file through the
        background thread alone (the writer never checkpoints here)."""
        db = tmp_path / "w.db"
        writer = sqlite3.connect(db, isolation_level=None)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE t (x BLOB)")
        writer.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 200)
        before = db.stat().st_size
        checkpointer = WalCheckpointer(db, interval_s=0.01)
        deadline = time.monotonic() + 10
        while checkpointer.checkpoints < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        checkpointer.close()
        writer.close()
        assert (before, db.stat().st_size >= 200 * 1000) == (4096, True)  # header only


class TestMockYield:
    """The seeded mock yields to the event loop once per token, cheaply."""

    @pytest.mark.anyio
    async def test_other_tasks_run_between_two_tokens(self) -> None:
        """At full speed, a task scheduled before the stream runs before its second
        token: every token is one pass of the loop, as with a real engine."""
        order: list[str] = []
        engine = MockEngine(default_handler(length=3))
        req = CompletionRequest(prompt="p", seed=1, temperature=0.0, top_k=40, top_p=0.95,
                                min_p=0.05, repeat_penalty=1.0, max_tokens=3)

        async def other() -> None:
            for _ in range(3):
                order.append("other")
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        async for item in engine.stream(req):
            if isinstance(item, Delta):
                order.append("token")
        await task
        assert order == ["other", "token", "other", "token", "other", "token"]
