"""The store's schema and its migrations (NERVE-4040): the event log survives an upgrade."""

from __future__ import annotations

import pathlib
import sqlite3

import msgspec
import pytest

from orchestrator_core.rows import StepRow
from orchestrator_core.store import SCHEMA_VERSION, SqliteStore
from test_harness.unit.conftest import RUN, seeded

pytestmark = pytest.mark.sqlite_only  # the SQLite file's schema and migrations (PG-9053)


def _rows(store: SqliteStore) -> list[tuple[int, str, bytes]]:
    return store.read_events("s", -1)


def test_a_v4_event_log_is_carried_into_v5_unchanged(tmp_path: pathlib.Path) -> None:
    """Frames written under v4 read back identically after the v5 rebuild."""
    old = seeded(SqliteStore(tmp_path / "o.db", migrate_to=4))
    frames = [("s", i, "r", "token", b'{"i":%d}' % i) for i in range(5)]
    old.commit_events(frames[::-1], [("s", {"last_seq": 4})])
    before = _rows(old)
    old.close()
    assert sqlite3.connect(tmp_path / "o.db").execute("PRAGMA user_version").fetchone() == (4,)
    new = SqliteStore(tmp_path / "o.db")
    assert _rows(new) == before == [(i, "token", b'{"i":%d}' % i) for i in range(5)]
    con = sqlite3.connect(tmp_path / "o.db")
    assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (17,)
    indexes = {r[1] for r in con.execute("PRAGMA index_list(events)")}
    assert "events_run" not in indexes
    new.close()


def _step(store: SqliteStore, step_id: str, run_id: str, status: str = "succeeded") -> None:
    assert store.insert_step(StepRow(step_id=step_id, run_id=run_id, type="llm_call",
                                     client_token=f"c-{step_id}", input="{}", input_hash="i",
                                     placement=None, status=status, seed=None,
                                     created_at="t"))


def test_v6_numbers_the_steps_of_each_run_in_creation_order(tmp_path: pathlib.Path) -> None:
    """[NERVE-4008] Steps a v5 store holds get per-Run ordinals 0, 1, … in creation order."""
    old = seeded(SqliteStore(tmp_path / "o.db", migrate_to=5))  # step "s" of run "r" first
    old.insert_run(msgspec.structs.replace(RUN, run_id="r2"))
    for step_id, run_id in (("x", "r2"), ("t", "r"), ("y", "r2"), ("u", "r")):
        _step(old, step_id, run_id)
    old.close()
    assert sqlite3.connect(tmp_path / "o.db").execute("PRAGMA user_version").fetchone() == (5,)
    new = SqliteStore(tmp_path / "o.db")
    con = sqlite3.connect(tmp_path / "o.db")
    assert con.execute("SELECT run_id, step_id, ordinal FROM steps ORDER BY run_id, ordinal"
                       ).fetchall() == [("r", "s", 0), ("r", "t", 1), ("r", "u", 2),
                                        ("r2", "x", 0), ("r2", "y", 1)]
    assert con.execute("PRAGMA user_version").fetchone() == (17,)
    _step(new, "v", "r", status="running")
    assert (new.steps_high_water("r"), new.unfinished_ordinals("r")) == (3, [0, 3])
    new.close()


def test_the_cursor_queries_read_indexes_only(store: SqliteStore) -> None:
    """[NERVE-4008] A checkpoint cursor is index lookups: no scan of the Run's steps or facts."""
    plans = {name: " ".join(r[3] for r in store._conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                               ("r",)))
             for name, sql in (
                 ("high", "SELECT COALESCE(MAX(ordinal), -1) FROM steps WHERE run_id = ?"),
                 ("open", "SELECT ordinal FROM steps WHERE run_id = ? AND status IN"
                          " ('queued', 'running') ORDER BY ordinal"),
                 ("facts", "SELECT COALESCE(MAX(seq), -1) FROM facts WHERE run_id = ?"))}
    assert plans == {
        "high": "SEARCH steps USING COVERING INDEX steps_run_ordinal (run_id=?)",
        "open": "SEARCH steps USING INDEX steps_run_unfinished (run_id=?)",
        "facts": "SEARCH facts USING COVERING INDEX sqlite_autoindex_facts_2 (run_id=?)"}


def test_a_frame_sequence_number_is_stored_once(store: SqliteStore) -> None:
    """``(step_id, seq)`` is the key: a second frame with the same number is refused."""
    store.commit_events([("s", 0, "r", "started", b"{}")], [])
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_events([("s", 0, "r", "token", b"{}")], [])
    assert _rows(store) == [(0, "started", b"{}")]
