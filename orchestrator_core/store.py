"""The SQLite store: flows, runs, steps and the event log, in one WAL database (DESIGN.md §1, §7).

Schema creation and migrations go through sqlite-utils; the hot paths (event appends,
cursor reads) use plain ``sqlite3`` with ``executemany``. All writes happen on the event
loop thread through one connection, in explicit transactions:

* a Step row and its idempotency key ``UNIQUE(run_id, client_token)`` are one row, so the
  mapping can never point at two Steps;
* :meth:`SqliteStore.commit_events` appends frames and applies Step status changes in
  one transaction, so a terminal frame and the terminal status are never apart.

The :class:`Store` protocol names what a PostgreSQL backend would implement.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import sqlite_utils

from orchestrator_core.flow_aliases import FLOW_BY_HASH, FLOW_BY_ID, migrate_v8

__all__ = ["SCHEMA_VERSION", "EventRow", "SqliteStore", "StepUpdate", "Store"]

SCHEMA_VERSION = 8

EventRow = tuple[str, int, str, str, bytes]
"""``(step_id, seq, run_id, type, data_json)``: one durable frame."""

StepUpdate = tuple[str, dict[str, Any]]
"""``(step_id, {column: value})``: a Step row change committed with the frames."""

_STEP_COLUMNS = (
    "step_id", "run_id", "type", "client_token", "input", "input_hash", "placement",
    "status", "seed", "created_at", "tokens_in", "tokens_out", "cost_usd", "wall_ms",
    "provenance", "error", "last_seq", "replay_of_step",
)
_UPDATABLE = frozenset({
    "status", "tokens_in", "tokens_out", "cost_usd", "wall_ms", "provenance", "error",
    "last_seq",
})


class Store(Protocol):
    """What the domain needs from a store; :class:`SqliteStore` is the embedded default."""

    def insert_flow(self, row: dict[str, Any]) -> bool: ...
    def get_flow(self, flow_id: str) -> dict[str, Any] | None: ...
    def get_flow_by_hash(self, tenant: str, flow_hash: str) -> dict[str, Any] | None: ...
    def insert_run(self, row: dict[str, Any]) -> None: ...
    def get_run(self, run_id: str) -> dict[str, Any] | None: ...
    def set_run_status(self, run_id: str, status: str) -> None: ...
    def insert_step(self, row: dict[str, Any]) -> bool: ...
    def get_step(self, step_id: str) -> dict[str, Any] | None: ...
    def get_step_by_token(self, run_id: str, client_token: str) -> dict[str, Any] | None: ...
    def list_steps(self, run_id: str) -> list[dict[str, Any]]: ...
    def commit_events(self, rows: Sequence[EventRow], updates: Sequence[StepUpdate]) -> None: ...
    def read_events(self, step_id: str, after_seq: int,
                    limit: int) -> list[tuple[int, str, bytes]]: ...
    def close(self) -> None: ...


class SqliteStore:
    """The embedded store (WAL, one writer connection on the event-loop thread).

    Args:
        path: database file; ``":memory:"`` is refused because readers need WAL.
        synchronous: ``NORMAL`` (durable across process crashes) or ``FULL``.
    """

    def __init__(self, path: str | pathlib.Path, synchronous: str = "NORMAL") -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={synchronous}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.row_factory = sqlite3.Row
        self._migrate()

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

    # -- schema ------------------------------------------------------------------------

    def _migrate(self) -> None:
        db = sqlite_utils.Database(self._conn)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version < 1:
            self._migrate_v1(db)
        if version < 2:
            self._migrate_v2()
        if version < 3:
            self._migrate_v3()
        if version < 4:
            self._migrate_v4()
        if version < 5:
            self._migrate_v5()
        if version < 6:
            self._migrate_v6()
        if version < 7:
            self._migrate_v7()
        if version < 8:
            self._migrate_v8()

    def _migrate_v6(self) -> None:
        """Steps get ``ordinal``: their position in their Run (0, 1, … in creation order,
        ``UNIQUE(run_id, ordinal)``), so a checkpoint cursor is a high-water mark instead
        of a list of every finished Step (NERVE-4008).

        Existing Steps are numbered in creation (rowid) order. A partial index over the
        unfinished Steps of a Run lets a cursor list them without reading the finished
        ones, and ``checkpoints_run_order`` pages a Run's checkpoints in creation order.
        """
        with self._transaction():
            self._conn.execute("ALTER TABLE steps ADD COLUMN ordinal INTEGER")
            next_of: dict[str, int] = {}
            numbered: list[tuple[int, int]] = []
            for rowid, run_id in self._conn.execute(
                    "SELECT rowid, run_id FROM steps ORDER BY rowid").fetchall():
                numbered.append((next_of.get(run_id, 0), rowid))
                next_of[run_id] = numbered[-1][0] + 1
            self._conn.executemany("UPDATE steps SET ordinal = ? WHERE rowid = ?", numbered)
            self._conn.execute("CREATE UNIQUE INDEX steps_run_ordinal ON steps(run_id, ordinal)")
            self._conn.execute("CREATE INDEX steps_run_unfinished ON steps(run_id, ordinal)"
                               " WHERE status IN ('queued', 'running')")
            self._conn.execute("CREATE INDEX checkpoints_run_order ON checkpoints(run_id)")
            self._conn.execute("PRAGMA user_version=6")

    def _migrate_v7(self) -> None:
        """Engine builds: each build fingerprint with the settings it hashes, so that a
        refused strict_replay can name the setting that changed (NERVE-4022)."""
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS engine_builds ("
                " fingerprint TEXT PRIMARY KEY,"
                " settings TEXT NOT NULL) WITHOUT ROWID")
            self._conn.execute("PRAGMA user_version=7")

    def _migrate_v8(self) -> None:
        """Flows re-addressed under RFC 8785, their old addresses kept as aliases
        (:mod:`orchestrator_core.flow_aliases`, NERVE-4048)."""
        with self._transaction():
            migrate_v8(self._conn)
            self._conn.execute("PRAGMA user_version=8")

    def _migrate_v5(self) -> None:
        """The event log keyed by ``(step_id, seq)`` itself (``WITHOUT ROWID``).

        Before v5 the table had a rowid, a separate ``UNIQUE(step_id, seq)`` index and an
        unused ``events_run`` index: three B-trees written per frame. Now one is (about
        1 µs less per streamed token in ``tools.bench.streams``); the rows are copied in
        ``(step_id, seq)`` order in one transaction.
        """
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE events_v5 ("
                " step_id TEXT NOT NULL REFERENCES steps(step_id),"
                " seq INTEGER NOT NULL,"
                " run_id TEXT NOT NULL,"
                " type TEXT NOT NULL,"
                " data BLOB NOT NULL,"
                " PRIMARY KEY (step_id, seq)) WITHOUT ROWID")
            self._conn.execute(
                "INSERT INTO events_v5 (step_id, seq, run_id, type, data)"
                " SELECT step_id, seq, run_id, type, data FROM events ORDER BY step_id, seq")
            self._conn.execute("DROP TABLE events")
            self._conn.execute("ALTER TABLE events_v5 RENAME TO events")
            self._conn.execute("PRAGMA user_version=5")

    def _migrate_v4(self) -> None:
        """Checkpoints (content-addressed) and Run lineage (parent run, checkpoint)."""
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS checkpoints ("
                " checkpoint_id TEXT PRIMARY KEY,"
                " run_id TEXT NOT NULL REFERENCES runs(run_id),"
                " step_id TEXT, hash TEXT NOT NULL, snapshot TEXT NOT NULL,"
                " cursor TEXT NOT NULL, ts TEXT NOT NULL)")
            self._conn.execute("CREATE INDEX IF NOT EXISTS checkpoints_run"
                               " ON checkpoints(run_id, ts)")
            for column in ("parent_run_id", "from_checkpoint"):
                self._conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
            self._conn.execute("PRAGMA user_version=4")

    # -- checkpoints -------------------------------------------------------------------

    def insert_checkpoint(self, row: dict[str, Any]) -> bool:
        """Store a checkpoint unless its content address exists; True when created."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO checkpoints (checkpoint_id, run_id, step_id, hash,"
            " snapshot, cursor, ts) VALUES (:checkpoint_id, :run_id, :step_id, :hash,"
            " :snapshot, :cursor, :ts)", row)
        return cur.rowcount == 1

    def get_checkpoint(self, checkpoint_id: str) -> dict[str, Any] | None:
        """The checkpoint row, or None."""
        return self._one("SELECT * FROM checkpoints WHERE checkpoint_id = ?", (checkpoint_id,))

    def checkpoint_position(self, run_id: str, checkpoint_id: str) -> int | None:
        """Where a checkpoint of this Run sits in its creation order, or None when the Run
        has no such checkpoint (an opaque, increasing number)."""
        row = self._conn.execute("SELECT rowid FROM checkpoints WHERE checkpoint_id = ?"
                                 " AND run_id = ?", (checkpoint_id, run_id)).fetchone()
        return None if row is None else int(row[0])

    def list_checkpoints(self, run_id: str, after: int = 0,
                         limit: int = 1000) -> list[dict[str, Any]]:
        """A page of a Run's checkpoints, oldest first, after position ``after``."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM checkpoints WHERE run_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
            (run_id, after, limit))]

    def child_runs(self, run_id: str) -> list[str]:
        """Runs forked from this Run's checkpoints."""
        return [r[0] for r in self._conn.execute(
            "SELECT run_id FROM runs WHERE parent_run_id = ? ORDER BY rowid", (run_id,))]

    def set_lineage(self, run_id: str, parent_run_id: str, checkpoint_id: str) -> None:
        """Record where a forked Run came from."""
        self._conn.execute("UPDATE runs SET parent_run_id = ?, from_checkpoint = ?"
                           " WHERE run_id = ?", (parent_run_id, checkpoint_id, run_id))

    def _migrate_v3(self) -> None:
        """Facts: append-only, one total order per Run (``UNIQUE(run_id, seq)``)."""
        with self._transaction():
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS facts ("
                " fact_id TEXT PRIMARY KEY,"
                " run_id TEXT NOT NULL REFERENCES runs(run_id),"
                " flow_id TEXT NOT NULL,"
                " seq INTEGER NOT NULL,"
                " type TEXT NOT NULL,"
                " schema_uri TEXT NOT NULL,"
                " data TEXT NOT NULL,"
                " emitted_by_step TEXT,"
                " ts TEXT NOT NULL,"
                " UNIQUE (run_id, seq))")
            self._conn.execute("CREATE INDEX IF NOT EXISTS facts_flow ON facts(flow_id, type)")
            self._conn.execute("PRAGMA user_version=3")

    def _migrate_v2(self) -> None:
        """Tenancy: flows and runs belong to a tenant; a flow's hash is unique per tenant."""
        with self._transaction():
            for table in ("flows", "runs"):
                self._conn.execute(f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL"
                                   " DEFAULT 'default'")
            self._conn.execute("DROP INDEX IF EXISTS idx_flows_hash")
            self._conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS flows_tenant_hash"
                               " ON flows(tenant, hash)")
            self._conn.execute("PRAGMA user_version=2")

    def _migrate_v1(self, db: sqlite_utils.Database) -> None:
        """The initial schema: flows, runs, steps (with the idempotency key), events."""
        with self._transaction():
            db.table("flows").create(
                {"flow_id": str, "hash": str, "ast_ir": str, "tools": str, "config": str,
                 "labels": str, "created_at": str},
                pk="flow_id", not_null={"hash", "ast_ir", "tools", "config"},
                if_not_exists=True,
            )
            db.table("flows").create_index(["hash"], unique=True, if_not_exists=True)
            db.table("runs").create(
                {"run_id": str, "flow_id": str, "flow_hash": str, "mode": str, "seed": int,
                 "replay_of": str, "body": str, "policy_hash": str, "status": str,
                 "created_at": str},
                pk="run_id", foreign_keys=[("flow_id", "flows", "flow_id")],
                not_null={"flow_id", "mode", "seed", "body", "status"}, if_not_exists=True,
            )
            db.table("steps").create(
                {"step_id": str, "run_id": str, "type": str, "client_token": str,
                 "input": str, "input_hash": str, "placement": str, "status": str,
                 "seed": int, "created_at": str, "tokens_in": int, "tokens_out": int,
                 "cost_usd": float, "wall_ms": int, "provenance": str, "error": str,
                 "last_seq": int, "replay_of_step": str},
                pk="step_id", foreign_keys=[("run_id", "runs", "run_id")],
                not_null={"run_id", "type", "client_token", "input", "input_hash",
                          "status", "last_seq"},
                defaults={"tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0, "wall_ms": 0,
                          "last_seq": -1},
                if_not_exists=True,
            )
            db.table("steps").create_index(["run_id", "client_token"], unique=True,
                                     if_not_exists=True)
            db.table("steps").create_index(["status"], if_not_exists=True)
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS events ("
                " gseq INTEGER PRIMARY KEY,"
                " step_id TEXT NOT NULL REFERENCES steps(step_id),"
                " seq INTEGER NOT NULL,"
                " run_id TEXT NOT NULL,"
                " type TEXT NOT NULL,"
                " data BLOB NOT NULL,"
                " UNIQUE (step_id, seq))"
            )
            self._conn.execute("CREATE INDEX IF NOT EXISTS events_run ON events(run_id, gseq)")
            self._conn.execute("PRAGMA user_version=1")

    # -- flows -------------------------------------------------------------------------

    def insert_flow(self, row: dict[str, Any]) -> bool:
        """Insert a Flow unless its hash exists. Returns True when it was created."""
        cur = self._conn.execute(
            "INSERT OR IGNORE INTO flows (flow_id, hash, ast_ir, tools, config, labels,"
            " created_at, tenant) VALUES (:flow_id, :hash, :ast_ir, :tools, :config, :labels,"
            " :created_at, :tenant)", {"tenant": "default", **row})
        return cur.rowcount == 1

    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        """The Flow row by its flow_id or a pre-v8 alias of it, or None."""
        return (self._one("SELECT * FROM flows WHERE flow_id = ?", (flow_id,))
                or self._one(FLOW_BY_ID, {"id": flow_id}))

    def get_flow_by_hash(self, tenant: str, flow_hash: str) -> dict[str, Any] | None:
        """The tenant's Flow with this content hash (or pre-v8 hash), or None."""
        return (self._one("SELECT * FROM flows WHERE tenant = ? AND hash = ?",
                          (tenant, flow_hash))
                or self._one(FLOW_BY_HASH, {"tenant": tenant, "hash": flow_hash}))

    # -- runs --------------------------------------------------------------------------

    def insert_run(self, row: dict[str, Any]) -> None:
        """Insert a Run row (autocommit: one statement is one transaction)."""
        self._conn.execute(
            "INSERT INTO runs (run_id, flow_id, flow_hash, mode, seed, replay_of, body,"
            " policy_hash, status, created_at, tenant) VALUES (:run_id, :flow_id, :flow_hash,"
            " :mode, :seed, :replay_of, :body, :policy_hash, :status, :created_at, :tenant)",
            {"tenant": "default", **row})

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The Run row, or None."""
        return self._one("SELECT * FROM runs WHERE run_id = ?", (run_id,))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Change a Run's status."""
        self._conn.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def run_usage(self, run_id: str) -> dict[str, Any]:
        """Sums over the Run's Steps: tokens, cost, wall ms and counts by status."""
        usage = self._conn.execute(
            "SELECT COALESCE(SUM(tokens_in),0) ti, COALESCE(SUM(tokens_out),0) tout,"
            " COALESCE(SUM(cost_usd),0.0) cost, COALESCE(SUM(wall_ms),0) wall"
            " FROM steps WHERE run_id = ?", (run_id,)).fetchone()
        counts = {r[0]: r[1] for r in self._conn.execute(
            "SELECT status, COUNT(*) FROM steps WHERE run_id = ? GROUP BY status", (run_id,))}
        return {"tokens_in": usage["ti"], "tokens_out": usage["tout"],
                "cost_usd": usage["cost"], "wall_ms": usage["wall"], "counts": counts}

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

    def insert_step(self, row: dict[str, Any]) -> bool:
        """Insert a Step and so claim its ``(run_id, client_token)`` key; it gets the next
        ``ordinal`` of its Run in the same statement.

        Returns:
            False when the key is already taken (the caller re-reads the existing Step).
        """
        cols = [c for c in _STEP_COLUMNS if c in row]
        sql = (f"INSERT OR IGNORE INTO steps ({', '.join(cols)}, ordinal) VALUES "  # noqa: S608 - columns from _STEP_COLUMNS
               f"({', '.join(':' + c for c in cols)}, (SELECT COALESCE(MAX(ordinal), -1) + 1"
               " FROM steps WHERE run_id = :run_id))")
        return self._conn.execute(sql, row).rowcount == 1

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

    def get_step(self, step_id: str) -> dict[str, Any] | None:
        """The Step row, or None."""
        return self._one("SELECT * FROM steps WHERE step_id = ?", (step_id,))

    def get_step_by_token(self, run_id: str, client_token: str) -> dict[str, Any] | None:
        """The Step a Run's client_token maps to, or None."""
        return self._one("SELECT * FROM steps WHERE run_id = ? AND client_token = ?",
                         (run_id, client_token))

    def list_steps(self, run_id: str) -> list[dict[str, Any]]:
        """The Run's Steps in creation order."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,))]

    def unfinished_steps(self) -> list[dict[str, Any]]:
        """Steps left ``queued`` or ``running`` (after a crash)."""
        return [dict(r) for r in self._conn.execute(
            "SELECT * FROM steps WHERE status IN ('queued', 'running') ORDER BY rowid")]

    # -- facts -------------------------------------------------------------------------

    def append_fact(self, row: dict[str, Any]) -> int:
        """Append a Fact at the end of its Run's order, in one transaction.

        Returns:
            Its ``seq`` (0 for the Run's first Fact).
        """
        with self._transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM facts WHERE run_id = ?",
                               (row["run_id"],)).fetchone()[0]
            conn.execute(
                "INSERT INTO facts (fact_id, run_id, flow_id, seq, type, schema_uri, data,"
                " emitted_by_step, ts) VALUES (:fact_id, :run_id, :flow_id, :seq, :type,"
                " :schema_uri, :data, :emitted_by_step, :ts)", {**row, "seq": seq})
        return int(seq)

    def facts_high_water(self, run_id: str) -> int:
        """The Run's last Fact ``seq``, -1 when it has none (index lookup)."""
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), -1) FROM facts"
                                      " WHERE run_id = ?", (run_id,)).fetchone()[0])

    def list_facts(self, *, run_id: str | None = None, flow_id: str | None = None,
                   fact_type: str | None = None, step_id: str | None = None,
                   since_seq: int = -1, limit: int = 1000,
                   fact_ids: list[str] | None = None) -> list[dict[str, Any]]:
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
        sql = (f"SELECT * FROM facts WHERE {' AND '.join(where)}"  # noqa: S608 - fixed columns
               " ORDER BY run_id, seq LIMIT ?")
        return [dict(r) for r in self._conn.execute(sql, (*args, limit))]

    # -- events ------------------------------------------------------------------------

    def commit_events(self, rows: Sequence[EventRow], updates: Sequence[StepUpdate]) -> None:
        """Append frames and apply Step changes in ONE transaction (crash-atomic).

        Each update sets ``last_seq`` implicitly to the highest appended seq of its Step
        when the caller does not give it.
        """
        with self._transaction() as conn:
            if rows:
                conn.executemany(
                    "INSERT INTO events (step_id, seq, run_id, type, data)"
                    " VALUES (?, ?, ?, ?, ?)", rows)
            for step_id, changes in updates:
                bad = set(changes) - _UPDATABLE
                if bad:
                    raise ValueError(f"not updatable: {sorted(bad)}")
                sets = ", ".join(f"{k} = :{k}" for k in changes)
                conn.execute(f"UPDATE steps SET {sets} WHERE step_id = :_id",  # noqa: S608
                             {**changes, "_id": step_id})

    def read_events(self, step_id: str, after_seq: int,
                    limit: int = 100_000) -> list[tuple[int, str, bytes]]:
        """Durable frames of a Step with ``seq > after_seq``, in order: ``(seq, type, data)``."""
        return [(r[0], r[1], bytes(r[2])) for r in self._conn.execute(
            "SELECT seq, type, data FROM events WHERE step_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?", (step_id, after_seq, limit))]

    def max_seq(self, step_id: str) -> int:
        """Highest committed seq of a Step, -1 when it has none."""
        row = self._conn.execute("SELECT MAX(seq) FROM events WHERE step_id = ?",
                                 (step_id,)).fetchone()
        return -1 if row[0] is None else int(row[0])

    def integrity(self) -> dict[str, int]:
        """Counts used by crash tests: gaps in per-Step seqs, Steps whose last_seq
        disagrees with their log, terminal frames per Step above one."""
        gaps = self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT step_id, COUNT(*) n, MAX(seq) m FROM events"
            " GROUP BY step_id HAVING n != m + 1)").fetchone()[0]
        stale = self._conn.execute(
            "SELECT COUNT(*) FROM steps s WHERE s.last_seq != COALESCE("
            "(SELECT MAX(seq) FROM events e WHERE e.step_id = s.step_id), -1)").fetchone()[0]
        multi_terminal = self._conn.execute(
            "SELECT COUNT(*) FROM (SELECT step_id FROM events WHERE type IN ('end','error')"
            " GROUP BY step_id HAVING COUNT(*) > 1)").fetchone()[0]
        return {"seq_gaps": gaps, "stale_last_seq": stale, "multi_terminal": multi_terminal}

    # -- misc --------------------------------------------------------------------------

    def _one(self, sql: str, args: Iterable[Any] | dict[str, Any]) -> dict[str, Any] | None:
        row = self._conn.execute(sql, args if isinstance(args, dict) else tuple(args)
                                 ).fetchone()
        return dict(row) if row is not None else None

    def close(self) -> None:
        """Checkpoint the WAL and close the connection."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._conn.close()
