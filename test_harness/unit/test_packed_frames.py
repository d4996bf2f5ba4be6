"""One event row per Step per group commit: packed frames read back as single frames
(STREAM-2011)."""

from __future__ import annotations

import pathlib
import sqlite3

import pytest

from orchestrator_core.config import mock_config
from orchestrator_core.store import SqliteStore
from test_harness.support import app_client, llm_step, parse_sse
from test_harness.unit.conftest import seeded

SSE = {"Accept": "text/event-stream"}
FRAMES = [("s", 0, "r", "started", b"{}"),
          *[("s", i, "r", "token", b'{"i":%d}' % (i - 1)) for i in range(1, 6)]]
"""A ``started`` frame and five tokens of Step ``s``, committed in one group."""


def _stream_many(data: pathlib.Path) -> tuple[str, bytes]:
    """Record one 300-token Step; its id and the stream its submission answered with."""
    with app_client(mock_config(data_dir=str(data), mock_options={"length": 300})) as c:
        flow = c.post("/v1/flows", json={"ast_ir": {"pack": 1}}).json()["flow_id"]
        run = c.post(f"/v1/flows/{flow}/runs", json={"mode": "record", "seed": 5}).json()
        with c.stream("POST", f"/v1/runs/{run['run_id']}/steps",
                      json=llm_step("many", max_tokens=300), headers=SSE) as resp:
            return resp.headers["x-step-id"], b"".join(resp.iter_bytes())


class TestStreamBytes:
    """A Step's stream is the same bytes live, from disk and resumed mid-row [STREAM-2011]."""

    def test_a_long_stream_reads_back_the_same_from_disk_and_from_any_resume_point(
            self, tmp_path: pathlib.Path) -> None:
        """[STREAM-2000] After a restart (no cache) the 300-token stream's durable frames
        read back byte for byte, and resuming after any id gives exactly those after it."""
        step_id, live = _stream_many(tmp_path / "data")
        blocks = [b + b"\n\n" for b in live.split(b"\n\n") if b.startswith(b"id: ")]
        with app_client(mock_config(data_dir=str(tmp_path / "data"))) as c:
            reread = c.get(f"/v1/steps/{step_id}/stream").content
            resumed = {n: c.get(f"/v1/steps/{step_id}/stream",
                                headers={"Last-Event-ID": str(n)}).content
                       for n in (0, 1, 2, 7, 63, 64, 150, 299, 300)}
        frames = [f for f in parse_sse(live) if f["id"] is not None]
        assert ([f["id"] for f in frames], frames[0]["event"], frames[-1]["event"]) == (
            list(range(302)), "started", "end")
        assert reread == b"".join(blocks)
        assert resumed == {n: b"".join(blocks[n + 1:]) for n in resumed}


class TestPackedRows:
    """The store keeps one row per Step per commit and reads it as frames [STREAM-2011]."""

    def test_one_commit_of_six_frames_is_one_row(self, store: SqliteStore,
                                                 tmp_path: pathlib.Path) -> None:
        """Six frames of one Step in one group commit are one ``events`` row."""
        store.commit_events(FRAMES, [("s", {"last_seq": 5})])
        con = sqlite3.connect(tmp_path / "o.db")
        try:
            assert con.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
        finally:
            con.close()

    def test_every_cursor_position_reads_the_frames_after_it(self,
                                                             store: SqliteStore) -> None:
        """``read_events`` after each seq, with and without a limit, and ``max_seq`` see
        the frames as they were appended, across two commits and a terminal frame."""
        store.commit_events(FRAMES, [("s", {"last_seq": 5})])
        store.commit_events([("s", 6, "r", "token", b'{"i":5}'), ("s", 7, "r", "end", b"{}")],
                            [("s", {"last_seq": 7, "status": "succeeded"})])
        frames = [(seq, t, d) for _s, seq, _r, t, d in FRAMES] + [
            (6, "token", b'{"i":5}'), (7, "end", b"{}")]
        assert {a: store.read_events("s", a) for a in range(-1, 8)} == {
            a: frames[a + 1:] for a in range(-1, 8)}
        assert [store.read_events("s", a, limit=2) for a in (-1, 2, 5)] == [
            frames[0:2], frames[3:5], frames[6:8]]
        assert (store.max_seq("s"), store.integrity()) == (7, {
            "seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0,
            "broken_references": 0, "usage_mismatch": 0})

    @pytest.mark.sqlite_only  # the SQLite file after a crash (PG-9053)
    def test_a_committed_packed_row_survives_a_crash(self, tmp_path: pathlib.Path) -> None:
        """Frames committed in one packed row read back whole from a store reopened after
        its process stopped without closing it [STREAM-2011]."""
        first = seeded(SqliteStore(tmp_path / "c.db"))
        first.commit_events(FRAMES, [("s", {"last_seq": 5})])
        # no close(): the WAL holds the commit, as after a kill
        again = SqliteStore(tmp_path / "c.db")
        assert (again.read_events("s", -1), again.max_seq("s")) == (
            [(seq, t, d) for _s, seq, _r, t, d in FRAMES], 5)
        first.close()
        again.close()

    @pytest.mark.sqlite_only  # SQLite rows rewritten by hand (PG-9053)
    def test_single_frame_rows_of_an_older_server_still_read(
            self, tmp_path: pathlib.Path) -> None:
        """Rows written one frame per row by schema v10 read the same after the upgrade,
        and frames appended after it continue them [STREAM-2011]."""
        old = seeded(SqliteStore(tmp_path / "u.db", migrate_to=10))
        old.commit_events(FRAMES[:3], [("s", {"last_seq": 2})])
        old.close()
        new = SqliteStore(tmp_path / "u.db")
        new.commit_events(FRAMES[3:], [("s", {"last_seq": 5})])
        assert (new.read_events("s", 1), new.max_seq("s"), new.integrity()["seq_gaps"]) == (
            [(seq, t, d) for _s, seq, _r, t, d in FRAMES[2:]], 5, 0)
        new.close()
