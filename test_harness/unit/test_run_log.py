"""The run log: run positions in commit order, kept by the database (NERVE-4100,
NERVE-4102), and the attempt in the idempotency key (NERVE-4105)."""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Any

import msgspec
import pytest

from orchestrator_core.frame_rows import PACKED, pack
from orchestrator_core.rows import StepRow
from orchestrator_core.store import SqliteStore
from test_harness.unit.conftest import seeded


def _step(store: SqliteStore, step_id: str, **fields: Any) -> bool:
    row = StepRow(step_id=step_id, run_id="r", type="llm_call", client_token=f"c-{step_id}",
                  input="{}", input_hash="i", placement=None, status="queued", seed=None,
                  created_at="t")
    return store.insert_step(msgspec.structs.replace(row, **fields))


def _log(store: SqliteStore) -> list[tuple[int, str, int, int, str]]:
    return store.run_log_page("r", -1, 1000)


class TestPackOrder:
    """A group commit writes each Step's rows in seq order (NERVE-4100)."""

    def test_a_terminal_frame_comes_after_the_frames_before_it(self) -> None:
        """[NERVE-4100] Tokens and the ``end`` of one Step in one commit: the packed
        tokens are written before the ``end`` row, so the run log numbers them first."""
        rows = [("s", 0, "r", "token", b"a"), ("s", 1, "r", "token", b"b"),
                ("s", 2, "r", "end", b"e"), ("t", 0, "r", "token", b"c")]
        assert [(r[0], r[1], r[3], r[5]) for r in pack(rows)] == [
            ("s", 0, PACKED, 1), ("s", 2, "end", None), ("t", 0, "token", None)]


class TestRunPositions:
    """Every frame of a Run gets a position, 0, 1, ... in commit order (NERVE-4100)."""

    def test_interleaved_commits_number_frames_in_commit_order(
            self, store: SqliteStore) -> None:
        """[NERVE-4100] Two Steps' frames over two commits: one entry per Step per commit,
        positions without a gap, each Step's in its seq order."""
        _step(store, "t")
        store.commit_events([("s", 0, "r", "token", b"1"), ("t", 0, "r", "token", b"2"),
                             ("s", 1, "r", "token", b"3")], [])
        store.commit_events([("t", 1, "r", "token", b"4"), ("t", 2, "r", "end", b"5"),
                             ("s", 2, "r", "end", b"6")], [])
        assert _log(store) == [(0, "s", 0, 2, "llm_call"), (2, "t", 0, 1, "llm_call"),
                               (3, "t", 1, 1, "llm_call"), (4, "t", 2, 1, "llm_call"),
                               (5, "s", 2, 1, "llm_call")]
        assert store.run_log_end("r") == 6
        assert store.run_log_page("r", 1, 10)[0] == (0, "s", 0, 2, "llm_call")
        assert store.run_log_page("r", 2, 2) == [(2, "t", 0, 1, "llm_call"),
                                                 (3, "t", 1, 1, "llm_call")]

    def test_a_step_served_by_reference_takes_positions_for_all_its_frames(
            self, store: SqliteStore) -> None:
        """[NERVE-4100] A Step stored finished by reference numbers every frame it names
        when it is inserted; a Step stored any other way numbers none."""
        store.commit_events([("s", 0, "r", "token", b"1"), ("s", 1, "r", "end", b"2")],
                            [("s", {"status": "succeeded"})])
        assert _step(store, "copy", status="succeeded", last_seq=1, frames_of="s",
                     frames_hash="b3:x")
        assert _step(store, "plain")
        assert _log(store) == [(0, "s", 0, 1, "llm_call"), (1, "s", 1, 1, "llm_call"),
                               (2, "copy", 0, 2, "llm_call")]
        assert store.read_events("copy", 0, 1) == [(1, "end", b"2")]

    @pytest.mark.sqlite_only  # SQLite's query plans (PG-9053)
    def test_the_run_log_reads_use_its_key(self, store: SqliteStore) -> None:
        """[NERVE-4102] A page, the end and the trigger's next position are searches of
        the ``(run_id, pos)`` key: no scan, whatever the Run holds."""
        conn = store._conn
        plans = [" ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
                 for sql, args in (
                     ("SELECT pos + n FROM run_log WHERE run_id = ? ORDER BY pos DESC"
                      " LIMIT 1", ("r",)),
                     ("SELECT r.pos, r.step_id, r.seq, r.n, s.type FROM run_log r"
                      " JOIN steps s ON s.step_id = r.step_id WHERE r.run_id = :run AND"
                      " r.pos >= IFNULL((SELECT MAX(pos) FROM run_log WHERE run_id = :run"
                      " AND pos <= :after), 0) ORDER BY r.pos LIMIT :limit",
                      {"run": "r", "after": 3, "limit": 5}))]
        assert all("SCAN" not in p for p in plans), plans
        assert all("USING PRIMARY KEY" in p for p in plans), plans


@pytest.mark.sqlite_only  # a SQLite file migrating (PG-9053)
class TestMigration:
    """Schema v13 numbers the frames the store already holds (NERVE-4100)."""

    def test_a_v12_store_gets_positions_step_by_step(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4100] Frames written before v13 are numbered Step by Step in submission
        order, and a new commit continues after them."""
        old = seeded(SqliteStore(tmp_path / "o.db", migrate_to=12))
        _step(old, "t")
        old.commit_events([("t", 0, "r", "token", b"1"), ("s", 0, "r", "token", b"2"),
                           ("s", 1, "r", "token", b"3")], [])
        old.close()
        new = SqliteStore(tmp_path / "o.db")
        assert _log(new) == [(0, "s", 0, 2, "llm_call"), (2, "t", 0, 1, "llm_call")]
        new.commit_events([("t", 1, "r", "end", b"4")], [])
        assert _log(new)[-1] == (3, "t", 1, 1, "llm_call")
        new.close()


class TestAttempts:
    """The idempotency key holds the attempt (NERVE-4105)."""

    @pytest.mark.sqlite_only  # SQLite rows rewritten by hand (PG-9053)
    def test_a_token_has_one_step_per_attempt_and_names_the_latest(
            self, store: SqliteStore) -> None:
        """[NERVE-4105] Attempt 1 of a token is a second Step; attempt 1 again is refused;
        the token then names attempt 1."""
        assert _step(store, "a1", client_token="c", attempt=1, retry_of="s")
        assert not _step(store, "a1b", client_token="c", attempt=1, retry_of="s")
        latest = store.get_step_by_token("r", "c")
        assert latest is not None
        assert (latest.step_id, latest.attempt, latest.retry_of) == ("a1", 1, "s")
        with pytest.raises(sqlite3.IntegrityError):
            store._conn.execute("UPDATE steps SET attempt = 1 WHERE step_id = 's'")
