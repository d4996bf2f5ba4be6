"""The embedded store's insert path for an imported recording (REC-7011).

:meth:`ImportRows.import_run` writes a whole Run, with its Steps, frames, Facts and
checkpoints, in ONE transaction, so a failure at any row leaves nothing behind.
:class:`~orchestrator_core.store.SqliteStore` mixes this class in.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Sequence

import msgspec

from orchestrator_core.frame_rows import EventSql, pack
from orchestrator_core.rows import CheckpointRow, EventRow, FactRow, FlowRow, RunRow, StepRow

__all__ = ["ImportRows"]

_GROUP = 256
"""Frames per packed row at most (the default ``commit_max_frames``, STREAM-2011)."""


class ImportRows:
    """``Store.import_run`` over the store's connection and statements."""

    _conn: sqlite3.Connection
    _ev: EventSql
    _insert_run: str
    _insert_fact: str
    _insert_checkpoint: str
    _insert_flow: str
    _run_n: int
    _flow_n: int
    _transaction: Callable[[], contextlib.AbstractContextManager[sqlite3.Connection]]
    insert_step: Callable[[StepRow], bool]

    def import_run(self, *, flow: FlowRow | None, run: RunRow, steps: Sequence[StepRow],
                   events: Sequence[EventRow], facts: Sequence[FactRow],
                   checkpoints: Sequence[CheckpointRow],
                   engine_builds: Sequence[tuple[str, str]],
                   prompt_texts: Sequence[tuple[str, str]] = ()) -> None:
        """Store an imported Run and everything it holds, atomically [REC-7011].

        Args:
            flow: the Flow to create first, or None when the tenant has it.
            run: the new Run.
            steps: its Steps in submission order (each gets the next ordinal).
            events: every frame of the Steps, ``(step_id, seq, run_id, type, data)``.
            facts: its Facts with their ``seq``.
            checkpoints: its checkpoints; one whose id exists is skipped.
            engine_builds: ``(fingerprint, settings JSON)`` (first writer wins).
            prompt_texts: ``(hash, text)`` of the Steps' rendered prompts (a hash already
                kept is left as it is; REC-7112).

        Raises:
            sqlite3.IntegrityError: a row collides (nothing is stored).
        """
        with self._transaction() as conn:
            if flow is not None:
                conn.execute(self._insert_flow,
                             msgspec.structs.astuple(flow)[:self._flow_n])
            conn.execute(self._insert_run, msgspec.structs.astuple(run)[:self._run_n])
            for row in steps:
                if not self.insert_step(row):
                    raise sqlite3.IntegrityError(f"step {row.client_token!r} twice")
            for at in range(0, len(events), _GROUP):  # rows like the live group commits'
                group = events[at:at + _GROUP]
                conn.executemany(self._ev.insert, pack(group) if self._ev.packed else group)
            conn.executemany(self._insert_fact, [msgspec.structs.astuple(f) for f in facts])
            conn.executemany(self._insert_checkpoint,
                             [msgspec.structs.astuple(c) for c in checkpoints])
            conn.executemany("INSERT OR IGNORE INTO engine_builds (fingerprint, settings)"
                             " VALUES (?, ?)", engine_builds)
            conn.executemany("INSERT OR IGNORE INTO prompt_texts (hash, text) VALUES (?, ?)",
                             prompt_texts)
