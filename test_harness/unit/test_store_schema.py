"""The store's schema and its migrations (NERVE-4040): the event log survives an upgrade."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from orchestrator_core.store import SCHEMA_VERSION, SqliteStore
from test_harness.unit.conftest import seeded


def _rows(store: SqliteStore) -> list[tuple[int, str, bytes]]:
    return store.read_events("s", -1)


def test_a_v4_event_log_is_carried_into_v5_unchanged(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames written under v4 read back identically after the v5 rebuild."""
    monkeypatch.setattr(SqliteStore, "_migrate_v5", lambda self: None)
    monkeypatch.setattr(SqliteStore, "_migrate_v6", lambda self: None)
    old = seeded(SqliteStore(tmp_path / "o.db"))
    frames = [("s", i, "r", "token", b'{"i":%d}' % i) for i in range(5)]
    old.commit_events(frames[::-1], [("s", {"last_seq": 4})])
    before = _rows(old)
    old.close()
    assert sqlite3.connect(tmp_path / "o.db").execute("PRAGMA user_version").fetchone() == (4,)
    monkeypatch.undo()
    new = SqliteStore(tmp_path / "o.db")
    assert _rows(new) == before == [(i, "token", b'{"i":%d}' % i) for i in range(5)]
    con = sqlite3.connect(tmp_path / "o.db")
    assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (6,)
    indexes = {r[1] for r in con.execute("PRAGMA index_list(events)")}
    assert "events_run" not in indexes
    new.close()


def test_a_frame_sequence_number_is_stored_once(store: SqliteStore) -> None:
    """``(step_id, seq)`` is the key: a second frame with the same number is refused."""
    store.commit_events([("s", 0, "r", "started", b"{}")], [])
    with pytest.raises(sqlite3.IntegrityError):
        store.commit_events([("s", 0, "r", "token", b"{}")], [])
    assert _rows(store) == [(0, "started", b"{}")]
