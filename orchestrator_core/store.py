"""The SQLite store: flows, runs, steps and the event log, in one WAL database (DESIGN.md §1,
§7). It implements :class:`orchestrator_core.store_base.Store` (PLACE-5008).

Opening a store opens the database and asks :mod:`orchestrator_core.migrations` to bring
its schema up to date (NERVE-4041). All writes happen on the event-loop thread through
one connection, in explicit transactions:

* a Step row and its idempotency key ``UNIQUE(run_id, client_token, attempt)`` are one
  row, so the mapping can never point at two Steps;
* :meth:`SqliteStore.commit_events` appends frames and applies Step status changes in
  one transaction, so a terminal frame and the terminal status are never apart.
* a Run's usage and Step counts are counters that triggers on ``steps`` (schema v9)
  change in the statement that inserts or updates a Step, so they are never apart from
  the Steps either, and :meth:`SqliteStore.run_usage` reads two keys (NERVE-4042).

WAL checkpoints run in a background thread (:mod:`orchestrator_core.wal_checkpoints`), so
that no ``COMMIT`` on the event loop carries one.

Rows are read as plain tuples from explicit column lists and built positionally into the
Structs of :mod:`orchestrator_core.rows`; the event log's reads stay tuples (the hot path).
The column lists are those of the schema as opened: a store opened at an older schema
(``migrate_to``, for tests that simulate an older server) reads and writes the columns
that schema has, and the rows take their defaults for the rest.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import msgspec

from orchestrator_core.frame_rows import MISCOUNT_ROWS, event_sql, expand, miscounted, pack
from orchestrator_core.migrations import SCHEMA_VERSION, migrate
from orchestrator_core.rows import (
    STEP_UPDATABLE,
    CheckpointRow,
    EventRead,
    EventRow,
    FactRow,
    FlowRow,
    RunRow,
    RunUsage,
    StepRow,
    StepUpdate,
)
from orchestrator_core.store_base import Store
from orchestrator_core.store_cache import CacheQueries
from orchestrator_core.store_import import ImportRows
from orchestrator_core.wal_checkpoints import BACKSTOP_PAGES, WalCheckpointer

__all__ = ["SCHEMA_VERSION", "EventRow", "SqliteStore", "StepUpdate", "Store"]

_R = TypeVar("_R", bound=msgspec.Struct)

FLOW_BY_ID = (
    "SELECT {columns} FROM flow_aliases a JOIN flows f ON f.flow_id = a.flow_id"
    " WHERE a.alias = :id LIMIT 1")
"""A Flow by an alias of its id (schema v8; the caller checks the tenant); read after a
miss. ``{columns}`` is the flows column list, each prefixed ``f.``."""

FLOW_BY_HASH = (
    "SELECT {columns} FROM flow_aliases a JOIN flows f ON f.flow_id = a.flow_id"
    " WHERE a.alias = :hash AND a.tenant = :tenant LIMIT 1")
"""A tenant's Flow by a pre-v8 hash; read after a miss."""


def _columns(conn: sqlite3.Connection, table: str, row: type[msgspec.Struct]) -> list[str]:
    """The row's fields that ``table`` has: a prefix of the fields, since a column a later
    schema added comes last in both (:mod:`orchestrator_core.rows`)."""
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    fields = list(row.__struct_fields__)
    cols = [f for f in fields if f in have] or fields
    if cols != fields[:len(cols)]:
        raise RuntimeError(f"table {table} has columns out of the order of {row.__name__}")
    return cols


def _select(table: str, cols: list[str]) -> str:
    return f"SELECT {', '.join(cols)} FROM {table}"  # noqa: S608 - names from rows.py


def _insert(verb: str, table: str, cols: list[str], *, next_ordinal: str | None = None) -> str:
    """``<verb> INTO table (cols) VALUES (?, ...)``; with ``next_ordinal``, the column
    ``ordinal`` takes that expression instead of a parameter."""
    marks = ["?"] * len(cols)
    if next_ordinal is not None:
        marks[cols.index("ordinal")] = next_ordinal
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join(marks)})"


class SqliteStore(CacheQueries, ImportRows):
    """The embedded store (WAL, one writer connection on the event-loop thread).

    Args:
        path: database file; ``":memory:"`` is refused because readers need WAL.
        synchronous: ``NORMAL`` (durable across process crashes) or ``FULL``.
        migrate_to: the schema version to migrate to; default :attr:`migrate_to`.

    Raises:
        sqlite3.Error: the file cannot be opened, or a migration failed.
    """

    migrate_to: ClassVar[int] = SCHEMA_VERSION
    """The schema version a store is brought to when opened; tests that simulate an
    older server lower it (``monkeypatch.setattr(SqliteStore, "migrate_to", 5)``)."""

    def __init__(self, path: str | pathlib.Path, synchronous: str = "NORMAL", *,
                 migrate_to: int | None = None) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        migrate(self._conn, self.migrate_to if migrate_to is None else migrate_to)
        self._prepare()
        # checkpoints run in a thread of their own, not inside a COMMIT of the loop
        self._conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        self._checkpointer = WalCheckpointer(self.path)

    def _prepare(self) -> None:
        """Build the column lists and statements of the schema as opened."""
        conn = self._conn
        flow, run, step, fact, ckp = (
            _columns(conn, t, r) for t, r in (("flows", FlowRow), ("runs", RunRow),
                                              ("steps", StepRow), ("facts", FactRow),
                                              ("checkpoints", CheckpointRow)))
        self._flows, self._runs, self._steps, self._facts, self._checkpoints = (
            _select(t, c) for t, c in (("flows", flow), ("runs", run), ("steps", step),
                                       ("facts", fact), ("checkpoints", ckp)))
        self._flows_f = ", ".join("f." + c for c in flow)
        self._flow_n, self._run_n = len(flow), len(run)
        self._insert_flow = _insert("INSERT OR IGNORE", "flows", flow)
        self._insert_run = _insert("INSERT", "runs", run)
        self._insert_fact = _insert("INSERT", "facts", fact)
        self._insert_checkpoint = _insert("INSERT OR IGNORE", "checkpoints", ckp)
        # the Step's ordinal (schema v6) is the next of its Run, in the same statement:
        # its parameter is the run_id of that subquery
        self._ordinal_at = step.index("ordinal") if "ordinal" in step else None
        self._step_n = len(step)
        self._insert_step = _insert("INSERT OR IGNORE", "steps", step, next_ordinal=(
            "(SELECT COALESCE(MAX(ordinal), -1) + 1 FROM steps WHERE run_id = ?)"
            if self._ordinal_at is not None else None))
        # the usage counters (schema v9); an older schema sums the Steps on each read
        self._counted = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'"
                                     " AND name = 'run_usage'").fetchone() is not None
        # a Step served by reference reads the frames of the Step it names (schema v10)
        self._refs = "frames_of" in step
        self._frames_of = ("COALESCE((SELECT frames_of FROM steps WHERE step_id = :id), :id)"
                           if self._refs else ":id")
        # one row per Step per group commit (schema v11, STREAM-2011)
        self._ev = event_sql("last_seq" in {r[1] for r in conn.execute(
            "PRAGMA table_info(events)")}, self._frames_of)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _one(self, row: type[_R], sql: str, args: Sequence[Any] | dict[str, Any]) -> _R | None:
        values = self._conn.execute(sql, args).fetchone()
        return None if values is None else row(*values)

    def _all(self, row: type[_R], sql: str, args: Sequence[Any]) -> list[_R]:
        return [row(*values) for values in self._conn.execute(sql, args)]

    # -- flows -------------------------------------------------------------------------

    def insert_flow(self, row: FlowRow) -> bool:
        """Insert a Flow unless its hash exists. Returns True when it was created."""
        values = msgspec.structs.astuple(row)[:self._flow_n]
        return self._conn.execute(self._insert_flow, values).rowcount == 1

    def get_flow(self, flow_id: str) -> FlowRow | None:
        """The Flow row by its flow_id or a pre-v8 alias of it, or None."""
        return (self._one(FlowRow, self._flows + " WHERE flow_id = ?", (flow_id,))
                or self._one(FlowRow, FLOW_BY_ID.format(columns=self._flows_f),
                             {"id": flow_id}))

    def get_flow_by_hash(self, tenant: str, flow_hash: str) -> FlowRow | None:
        """The tenant's Flow with this content hash (or pre-v8 hash), or None."""
        return (self._one(FlowRow, self._flows + " WHERE tenant = ? AND hash = ?",
                          (tenant, flow_hash))
                or self._one(FlowRow, FLOW_BY_HASH.format(columns=self._flows_f),
                             {"tenant": tenant, "hash": flow_hash}))

    # -- runs --------------------------------------------------------------------------

    def insert_run(self, row: RunRow) -> None:
        """Insert a Run row (autocommit: one statement is one transaction)."""
        self._conn.execute(self._insert_run, msgspec.structs.astuple(row)[:self._run_n])

    def get_run(self, run_id: str) -> RunRow | None:
        """The Run row, or None."""
        return self._one(RunRow, self._runs + " WHERE run_id = ?", (run_id,))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Change a Run's status."""
        self._conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def run_usage(self, run_id: str) -> RunUsage:
        """The Run's usage and Step counts by status: two key lookups in the counters
        the v9 triggers keep (NERVE-4042); a store opened at an older schema sums its
        Steps instead."""
        if not self._counted:
            return self.recount_usage(run_id)
        row = self._conn.execute(
            "SELECT tokens_in, tokens_out, cost_usd, wall_ms FROM run_usage"
            " WHERE run_id = ?", (run_id,)).fetchone()
        counts = dict(self._conn.execute(
            "SELECT status, n FROM run_step_counts WHERE run_id = ? AND n > 0"
            " ORDER BY status", (run_id,)))
        tokens_in, tokens_out, cost, wall = row or (0, 0, 0.0, 0)
        return RunUsage(tokens_in, tokens_out, cost, wall, counts)

    def recount_usage(self, run_id: str) -> RunUsage:
        """:meth:`run_usage` summed over the Run's Steps (O(its Steps); what the
        counters must equal, checked by :meth:`integrity`)."""
        tokens_in, tokens_out, cost, wall = self._conn.execute(
            "SELECT COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0),"
            " COALESCE(SUM(cost_usd),0.0), COALESCE(SUM(wall_ms),0)"
            " FROM steps WHERE run_id = ?", (run_id,)).fetchone()
        counts = dict(self._conn.execute(
            "SELECT status, COUNT(*) FROM steps WHERE run_id = ? GROUP BY status"
            " ORDER BY status", (run_id,)))
        return RunUsage(tokens_in, tokens_out, cost, wall, counts)

    def child_runs(self, run_id: str) -> list[str]:
        """Runs forked from this Run's checkpoints (index ``runs_parent``, schema v9)."""
        return [r[0] for r in self._conn.execute(
            "SELECT run_id FROM runs WHERE parent_run_id = ? ORDER BY rowid", (run_id,))]

    def set_lineage(self, run_id: str, parent_run_id: str, checkpoint_id: str) -> None:
        """Record where a forked Run came from."""
        self._conn.execute("UPDATE runs SET parent_run_id = ?, from_checkpoint = ?"
                           " WHERE run_id = ?", (parent_run_id, checkpoint_id, run_id))

    # -- engine builds -----------------------------------------------------------------

    def record_engine_build(self, fingerprint: str, settings_json: str) -> None:
        """Remember the settings behind a build fingerprint (first writer wins)."""
        self._conn.execute("INSERT OR IGNORE INTO engine_builds (fingerprint, settings)"
                           " VALUES (?, ?)", (fingerprint, settings_json))

    def engine_build(self, fingerprint: str) -> str | None:
        """The settings JSON recorded for a build fingerprint, or None."""
        row = self._conn.execute("SELECT settings FROM engine_builds WHERE fingerprint = ?",
                                 (fingerprint,)).fetchone()
        return None if row is None else str(row[0])

    # -- steps -------------------------------------------------------------------------

    def insert_step(self, row: StepRow) -> bool:
        """Insert a Step and so claim its ``(run_id, client_token)`` key; it gets the next
        ``ordinal`` of its Run in the same statement (``row.ordinal`` is ignored).

        Returns:
            False when the key is already taken (the caller re-reads the existing Step).
        """
        values = msgspec.structs.astuple(row)[:self._step_n]
        at = self._ordinal_at
        if at is not None:
            values = (*values[:at], row.run_id, *values[at + 1:])
        return self._conn.execute(self._insert_step, values).rowcount == 1

    def steps_high_water(self, run_id: str) -> int:
        """The highest ``ordinal`` of the Run's Steps, -1 when it has none (index lookup)."""
        return int(self._conn.execute("SELECT COALESCE(MAX(ordinal), -1) FROM steps"
                                      " WHERE run_id = ?", (run_id,)).fetchone()[0])

    def unfinished_ordinals(self, run_id: str) -> list[int]:
        """Ordinals of the Run's ``queued`` or ``running`` Steps, ascending (read from the
        partial index of unfinished Steps; the finished ones are never visited)."""
        return [r[0] for r in self._conn.execute(
            "SELECT ordinal FROM steps WHERE run_id = ? AND status IN ('queued', 'running')"
            " ORDER BY ordinal", (run_id,))]

    def last_step(self, run_id: str, step_type: str, status: str) -> StepRow | None:
        """The Run's latest Step of this type and status (index ``steps_run_type``,
        schema v9: the Run's Steps of other types are never visited), or None."""
        return self._one(StepRow, self._steps + " WHERE run_id = ? AND type = ?"
                         " AND status = ? ORDER BY ordinal DESC LIMIT 1",
                         (run_id, step_type, status))

    def get_step(self, step_id: str) -> StepRow | None:
        """The Step row, or None."""
        return self._one(StepRow, self._steps + " WHERE step_id = ?", (step_id,))

    def get_step_by_token(self, run_id: str, client_token: str) -> StepRow | None:
        """The latest attempt of a Run's client_token (NERVE-4105), or None."""
        return self._one(StepRow, self._steps + " WHERE run_id = ? AND client_token = ?"
                         " ORDER BY rowid DESC LIMIT 1", (run_id, client_token))

    def list_steps(self, run_id: str) -> list[StepRow]:
        """The Run's Steps in creation order."""
        return self._all(StepRow, self._steps + " WHERE run_id = ? ORDER BY rowid", (run_id,))

    def unfinished_steps(self) -> list[StepRow]:
        """Steps left ``queued`` or ``running`` (after a crash)."""
        return self._all(StepRow, self._steps + " WHERE status IN ('queued', 'running')"
                         " ORDER BY rowid", ())

    # -- facts -------------------------------------------------------------------------

    def append_fact(self, row: FactRow) -> int:
        """Append a Fact at the end of its Run's order, in one transaction (``row.seq``
        is ignored).

        Returns:
            Its ``seq`` (0 for the Run's first Fact).
        """
        with self._transaction() as conn:
            seq = int(conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM facts"
                                   " WHERE run_id = ?", (row.run_id,)).fetchone()[0])
            conn.execute(self._insert_fact,
                         msgspec.structs.astuple(msgspec.structs.replace(row, seq=seq)))
        return seq

    def facts_high_water(self, run_id: str) -> int:
        """The Run's last Fact ``seq``, -1 when it has none (index lookup)."""
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), -1) FROM facts"
                                      " WHERE run_id = ?", (run_id,)).fetchone()[0])

    def list_facts(self, *, run_id: str | None = None, flow_id: str | None = None,
                   fact_type: str | None = None, step_id: str | None = None,
                   since_seq: int = -1, limit: int = 1000,
                   fact_ids: list[str] | None = None) -> list[FactRow]:
        """Facts matching every given filter, in (run, seq) order."""
        where: list[str] = ["seq > ?"]
        args: list[Any] = [since_seq]
        for column, value in (("run_id", run_id), ("flow_id", flow_id), ("type", fact_type),
                              ("emitted_by_step", step_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if fact_ids is not None:
            where.append(f"fact_id IN ({', '.join('?' * len(fact_ids))})")
            args.extend(fact_ids)
        sql = (f"{self._facts} WHERE {' AND '.join(where)}"
               " ORDER BY run_id, seq LIMIT ?")
        return self._all(FactRow, sql, (*args, limit))

    # -- checkpoints -------------------------------------------------------------------

    def insert_checkpoint(self, row: CheckpointRow) -> bool:
        """Store a checkpoint unless its content address exists; True when created."""
        return self._conn.execute(self._insert_checkpoint,
                                  msgspec.structs.astuple(row)).rowcount == 1

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        """The checkpoint row, or None."""
        return self._one(CheckpointRow, self._checkpoints + " WHERE checkpoint_id = ?",
                         (checkpoint_id,))

    def checkpoint_position(self, run_id: str, checkpoint_id: str) -> int | None:
        """Where a checkpoint of this Run sits in its creation order, or None when the Run
        has no such checkpoint (an opaque, increasing number)."""
        row = self._conn.execute("SELECT rowid FROM checkpoints WHERE checkpoint_id = ?"
                                 " AND run_id = ?", (checkpoint_id, run_id)).fetchone()
        return None if row is None else int(row[0])

    def list_checkpoints(self, run_id: str, after: int = 0,
                         limit: int = 1000) -> list[CheckpointRow]:
        """A page of a Run's checkpoints, oldest first, after position ``after``."""
        return self._all(CheckpointRow, self._checkpoints + " WHERE run_id = ? AND rowid > ?"
                         " ORDER BY rowid LIMIT ?", (run_id, after, limit))

    # -- events ------------------------------------------------------------------------

    def commit_events(self, rows: Sequence[EventRow], updates: Sequence[StepUpdate]) -> None:
        """Append frames and apply Step changes in ONE transaction (crash-atomic).

        Each update sets ``last_seq`` implicitly to the highest appended seq of its Step
        when the caller does not give it.

        Raises:
            ValueError: an update names a column outside ``STEP_UPDATABLE``.
            sqlite3.IntegrityError: a frame's ``(step_id, seq)`` is already stored.
        """
        cursors: list[tuple[int, str]] = []  # (last_seq, step_id): the group's usual update
        others: list[tuple[str, dict[str, Any]]] = []
        for step_id, changes in updates:
            if len(changes) == 1 and "last_seq" in changes:
                cursors.append((changes["last_seq"], step_id))
                continue
            bad = set(changes) - STEP_UPDATABLE
            if bad:
                raise ValueError(f"not updatable: {sorted(bad)}")
            others.append((step_id, changes))
        with self._transaction() as conn:
            if rows:  # from v11 the commit's frames of a Step as one row (STREAM-2011)
                conn.executemany(self._ev.insert, pack(rows) if self._ev.packed else rows)
            if cursors:  # one prepared statement for every Step of a token group
                conn.executemany("UPDATE steps SET last_seq = ? WHERE step_id = ?", cursors)
            for step_id, changes in others:
                sets = ", ".join(f"{k} = :{k}" for k in changes)
                conn.execute(f"UPDATE steps SET {sets} WHERE step_id = :_id",  # noqa: S608
                             {**changes, "_id": step_id})

    def read_events(self, step_id: str, after_seq: int,
                    limit: int = 100_000) -> list[EventRead]:
        """Durable frames of a Step with ``seq > after_seq``, in order: ``(seq, type, data)``
        (``data`` is a BLOB, so it reads back as the bytes written). A Step served by
        reference reads the rows of the Step it names (NERVE-4025), in the same query.
        Packed rows are expanded into their frames; a cursor inside one starts in it
        (STREAM-2011)."""
        return expand(self._conn.execute(self._ev.read, {
            "id": step_id, "after": after_seq, "limit": limit}), after_seq, limit)

    def max_seq(self, step_id: str) -> int:
        """Highest committed seq of a Step (of the Step it names, when it is served by
        reference), -1 when it has none."""
        row = self._conn.execute(self._ev.max_seq, {"id": step_id}).fetchone()
        return -1 if row is None else int(row[0])

    def insert_served(self, row: StepRow, holder: str) -> tuple[bool, str]:
        """Insert a Step served by reference and, in the same transaction, keep its
        ``frames_hash`` on ``holder`` (the Step whose rows hold the frames) unless that
        one keeps a hash already (NERVE-4025; first writer wins).

        Returns:
            ``(created, kept)``, ``kept`` the hash ``holder`` keeps; nothing is inserted
            when that is another, or when the row's token is already taken.
        """
        with self._transaction() as conn:
            conn.execute("UPDATE steps SET frames_hash = ? WHERE step_id = ? AND"
                         " frames_hash IS NULL AND frames_of IS NULL", (row.frames_hash, holder))
            held = conn.execute("SELECT frames_hash FROM steps WHERE step_id = ?",
                                (holder,)).fetchone()
            kept = str(row.frames_hash if held is None or held[0] is None else held[0])
            return kept == row.frames_hash and self.insert_step(row), kept

    def integrity(self) -> dict[str, int]:
        """Counts used by crash tests: gaps in per-Step seqs (and packed rows
        whose frame count disagrees with their seqs), Steps whose last_seq
        disagrees with their log (the log they reference, for Steps served by reference),
        terminal frames per Step above one, Steps served by reference whose
        reference is broken: it names a Step that is missing, unfinished, itself a
        reference, or sealed with another hash, or the referencing Step has its own rows
        (NERVE-4025), and Runs whose usage counters differ from a recomputation over
        their Steps (NERVE-4042; USD within 1e-9 relative, for the order of the
        additions)."""
        conn, last = self._conn, self._ev.last
        gaps = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT step_id, SUM({last} - seq + 1) n,"  # noqa: S608
            f" MAX({last}) m FROM events GROUP BY step_id HAVING n != m + 1)").fetchone()[0]
        gaps += miscounted(conn.execute(MISCOUNT_ROWS)) if self._ev.packed else 0
        referenced = "COALESCE(s.frames_of, s.step_id)" if self._refs else "s.step_id"
        stale = conn.execute(
            "SELECT COUNT(*) FROM steps s WHERE s.last_seq != COALESCE("  # noqa: S608
            f"(SELECT MAX({last}) FROM events e WHERE e.step_id = {referenced}), -1)"
        ).fetchone()[0]
        multi_terminal = conn.execute(
            "SELECT COUNT(*) FROM (SELECT step_id FROM events WHERE type IN ('end','error')"
            " GROUP BY step_id HAVING COUNT(*) > 1)").fetchone()[0]
        broken = 0 if not self._refs else conn.execute(
            "SELECT COUNT(*) FROM steps s LEFT JOIN steps o ON o.step_id = s.frames_of"
            " WHERE s.frames_of IS NOT NULL AND (o.step_id IS NULL"
            " OR o.status IN ('queued', 'running') OR o.frames_of IS NOT NULL"
            " OR s.frames_hash IS NULL OR o.frames_hash IS NOT s.frames_hash"
            " OR EXISTS (SELECT 1 FROM events e WHERE e.step_id = s.step_id))").fetchone()[0]
        return {"seq_gaps": gaps, "stale_last_seq": stale, "multi_terminal": multi_terminal,
                "broken_references": broken, "usage_mismatch": self._usage_mismatches()}

    def _usage_mismatches(self) -> int:
        """Runs whose counters differ from the sums over their Steps (0 before v9)."""
        if not self._counted:
            return 0
        conn = self._conn
        bad = {r[0] for r in conn.execute("SELECT run_id FROM run_step_counts WHERE n < 0")}
        for (run_id,) in conn.execute("SELECT run_id FROM runs UNION SELECT run_id"
                                      " FROM run_usage").fetchall():
            kept, summed = self.run_usage(run_id), self.recount_usage(run_id)
            same_cost = abs(kept.cost_usd - summed.cost_usd) <= 1e-9 * max(
                1.0, abs(summed.cost_usd))
            if not same_cost or msgspec.structs.replace(kept, cost_usd=0.0) != \
                    msgspec.structs.replace(summed, cost_usd=0.0):
                bad.add(run_id)
        return len(bad)

    def close(self) -> None:
        """Stop the background checkpoints, checkpoint the WAL and close the connection."""
        self._checkpointer.close()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()
