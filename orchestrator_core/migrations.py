"""The SQLite schema, version by version: one ordered table of migrations (NERVE-4041).

The database's version is ``PRAGMA user_version`` (0 for a new file). :func:`migrate`
applies every migration above it, in order, each in its own ``BEGIN IMMEDIATE``
transaction together with its version bump, so a crash leaves the database at the last
version that completed and the next open carries on from there. A migration never
rewrites a recorded frame or a content address in place: rows are copied, renumbered or
aliased (schema v5, v6, v8), and derived data (v9's counters) is backfilled from the rows
it is derived from.

==  ================================================================================
v1  flows, runs, steps (with the idempotency key ``UNIQUE(run_id, client_token)``), events
v2  tenancy: ``tenant`` on flows and runs; a Flow hash is unique per tenant
v3  facts: append-only, one order per Run (``UNIQUE(run_id, seq)``)
v4  checkpoints (content-addressed) and Run lineage (parent run, checkpoint)
v5  the event log keyed by ``(step_id, seq)`` itself (``WITHOUT ROWID``)
v6  ``steps.ordinal``: a Step's position in its Run (NERVE-4008)
v7  engine builds: each build fingerprint with the settings it hashes (NERVE-4022)
v8  Flows re-addressed under RFC 8785, their old addresses kept as aliases (NERVE-4048)
v9  Run usage counters kept by triggers; indexes of lineage and Step type (NERVE-4042)
v10 Steps served by reference: ``steps.frames_of`` and ``steps.frames_hash`` (NERVE-4025)
v11 Packed event rows: ``events.last_seq``, a row per Step per commit (STREAM-2011)
==  ================================================================================
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import NamedTuple

import msgspec
import sqlite_utils

from orchestrator_core.canonical import flow_address

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate", "schema_version"]


class Migration(NamedTuple):
    """One schema version.

    Attributes:
        version: the ``user_version`` it leaves behind (1, 2, ...).
        summary: what it changes, in one line.
        apply: the DDL and data changes; runs inside the migration's transaction.
    """

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _v1(conn: sqlite3.Connection) -> None:
    """The initial schema: flows, runs, steps (with the idempotency key), events."""
    db = sqlite_utils.Database(conn)
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
    conn.execute(
        "CREATE TABLE IF NOT EXISTS events ("
        " gseq INTEGER PRIMARY KEY,"
        " step_id TEXT NOT NULL REFERENCES steps(step_id),"
        " seq INTEGER NOT NULL,"
        " run_id TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " data BLOB NOT NULL,"
        " UNIQUE (step_id, seq))"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS events_run ON events(run_id, gseq)")


def _v2(conn: sqlite3.Connection) -> None:
    """Tenancy: flows and runs belong to a tenant; a flow's hash is unique per tenant."""
    for table in ("flows", "runs"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL"
                     " DEFAULT 'default'")
    conn.execute("DROP INDEX IF EXISTS idx_flows_hash")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS flows_tenant_hash ON flows(tenant, hash)")


def _v3(conn: sqlite3.Connection) -> None:
    """Facts: append-only, one total order per Run (``UNIQUE(run_id, seq)``)."""
    conn.execute(
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
    conn.execute("CREATE INDEX IF NOT EXISTS facts_flow ON facts(flow_id, type)")


def _v4(conn: sqlite3.Connection) -> None:
    """Checkpoints (content-addressed) and Run lineage (parent run, checkpoint)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS checkpoints ("
        " checkpoint_id TEXT PRIMARY KEY,"
        " run_id TEXT NOT NULL REFERENCES runs(run_id),"
        " step_id TEXT, hash TEXT NOT NULL, snapshot TEXT NOT NULL,"
        " cursor TEXT NOT NULL, ts TEXT NOT NULL)")
    conn.execute("CREATE INDEX IF NOT EXISTS checkpoints_run ON checkpoints(run_id, ts)")
    for column in ("parent_run_id", "from_checkpoint"):
        conn.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")


def _v5(conn: sqlite3.Connection) -> None:
    """The event log keyed by ``(step_id, seq)`` itself (``WITHOUT ROWID``).

    Before v5 the table had a rowid, a separate ``UNIQUE(step_id, seq)`` index and an
    unused ``events_run`` index: three B-trees written per frame. Now one is (about
    1 µs less per streamed token in ``tools.bench.streams``); the rows are copied in
    ``(step_id, seq)`` order.
    """
    conn.execute(
        "CREATE TABLE events_v5 ("
        " step_id TEXT NOT NULL REFERENCES steps(step_id),"
        " seq INTEGER NOT NULL,"
        " run_id TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " data BLOB NOT NULL,"
        " PRIMARY KEY (step_id, seq)) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO events_v5 (step_id, seq, run_id, type, data)"
        " SELECT step_id, seq, run_id, type, data FROM events ORDER BY step_id, seq")
    conn.execute("DROP TABLE events")
    conn.execute("ALTER TABLE events_v5 RENAME TO events")


def _v6(conn: sqlite3.Connection) -> None:
    """Steps get ``ordinal``: their position in their Run (0, 1, … in creation order,
    ``UNIQUE(run_id, ordinal)``), so a checkpoint cursor is a high-water mark instead
    of a list of every finished Step (NERVE-4008).

    Existing Steps are numbered in creation (rowid) order. A partial index over the
    unfinished Steps of a Run lets a cursor list them without reading the finished
    ones, and ``checkpoints_run_order`` pages a Run's checkpoints in creation order.
    """
    conn.execute("ALTER TABLE steps ADD COLUMN ordinal INTEGER")
    next_of: dict[str, int] = {}
    numbered: list[tuple[int, int]] = []
    for rowid, run_id in conn.execute("SELECT rowid, run_id FROM steps ORDER BY rowid"
                                      ).fetchall():
        numbered.append((next_of.get(run_id, 0), rowid))
        next_of[run_id] = numbered[-1][0] + 1
    conn.executemany("UPDATE steps SET ordinal = ? WHERE rowid = ?", numbered)
    conn.execute("CREATE UNIQUE INDEX steps_run_ordinal ON steps(run_id, ordinal)")
    conn.execute("CREATE INDEX steps_run_unfinished ON steps(run_id, ordinal)"
                 " WHERE status IN ('queued', 'running')")
    conn.execute("CREATE INDEX checkpoints_run_order ON checkpoints(run_id)")


def _v7(conn: sqlite3.Connection) -> None:
    """Engine builds: each build fingerprint with the settings it hashes, so that a
    refused strict_replay can name the setting that changed (NERVE-4022)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS engine_builds ("
        " fingerprint TEXT PRIMARY KEY,"
        " settings TEXT NOT NULL) WITHOUT ROWID")


def _v8(conn: sqlite3.Connection) -> None:
    """Flows re-addressed under RFC 8785 canonical JSON (NERVE-4048).

    Before v8 a Flow's hash (and so its flow_id) was blake3 over msgspec's sorted
    encoding, which writes ``1.0``, ``1e21`` and ``-0.0`` where RFC 8785 writes ``1``,
    ``1e+21`` and ``0``. Every stored Flow's hash is recomputed in the new form; where it
    changed, the row takes the new hash (so reposting the same content finds it) and
    keeps its flow_id (Runs and Facts point at it), and ``flow_aliases`` maps the old
    hash and the flow_id the new hash derives to the row, so both old and new addresses
    keep resolving (the store reads the aliases after a miss).

    A Flow whose new hash another row of its tenant already holds (two contents that
    were distinct before and are equal under RFC 8785, such as ``1`` and ``1.0``) keeps
    its old hash; the new address resolves to the other row.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS flow_aliases ("
        " alias TEXT NOT NULL,"
        " tenant TEXT NOT NULL,"
        " flow_id TEXT NOT NULL REFERENCES flows(flow_id),"
        " PRIMARY KEY (alias, tenant)) WITHOUT ROWID")
    rows = conn.execute("SELECT flow_id, tenant, hash, ast_ir, tools, config FROM flows"
                        " ORDER BY rowid").fetchall()
    for flow_id, tenant, old_hash, ast_ir, tools, config in rows:
        content = {"ast_ir": msgspec.json.decode(ast_ir), "tools": msgspec.json.decode(tools),
                   "config": msgspec.json.decode(config)}
        new_hash, new_id = flow_address(content, tenant)
        if new_hash == old_hash:
            continue
        taken = conn.execute("SELECT 1 FROM flows WHERE tenant = ? AND hash = ?",
                             (tenant, new_hash)).fetchone()
        if taken is None:
            conn.execute("UPDATE flows SET hash = ? WHERE flow_id = ?", (new_hash, flow_id))
        conn.executemany("INSERT OR IGNORE INTO flow_aliases (alias, tenant, flow_id)"
                         " VALUES (?, ?, ?)",
                         [(old_hash, tenant, flow_id)]
                         + ([(new_id, tenant, flow_id)] if new_id != flow_id else []))


_V9_TRIGGERS = (
    # an inserted Step adds its usage (usually zero) and one to the count of its status
    """CREATE TRIGGER steps_usage_insert AFTER INSERT ON steps BEGIN
        INSERT INTO run_usage (run_id, tokens_in, tokens_out, cost_usd, wall_ms)
        VALUES (NEW.run_id, IFNULL(NEW.tokens_in, 0), IFNULL(NEW.tokens_out, 0),
                IFNULL(NEW.cost_usd, 0.0), IFNULL(NEW.wall_ms, 0))
        ON CONFLICT (run_id) DO UPDATE SET
            tokens_in = tokens_in + excluded.tokens_in,
            tokens_out = tokens_out + excluded.tokens_out,
            cost_usd = cost_usd + excluded.cost_usd,
            wall_ms = wall_ms + excluded.wall_ms;
        INSERT INTO run_step_counts (run_id, status, n) VALUES (NEW.run_id, NEW.status, 1)
        ON CONFLICT (run_id, status) DO UPDATE SET n = n + 1;
    END""",
    # a changed usage column adds the difference (the insert made the Run's row)
    """CREATE TRIGGER steps_usage_update
    AFTER UPDATE OF tokens_in, tokens_out, cost_usd, wall_ms ON steps
    WHEN OLD.tokens_in IS NOT NEW.tokens_in OR OLD.tokens_out IS NOT NEW.tokens_out
        OR OLD.cost_usd IS NOT NEW.cost_usd OR OLD.wall_ms IS NOT NEW.wall_ms BEGIN
        UPDATE run_usage SET
            tokens_in = tokens_in + IFNULL(NEW.tokens_in, 0) - IFNULL(OLD.tokens_in, 0),
            tokens_out = tokens_out + IFNULL(NEW.tokens_out, 0) - IFNULL(OLD.tokens_out, 0),
            cost_usd = cost_usd + IFNULL(NEW.cost_usd, 0.0) - IFNULL(OLD.cost_usd, 0.0),
            wall_ms = wall_ms + IFNULL(NEW.wall_ms, 0) - IFNULL(OLD.wall_ms, 0)
        WHERE run_id = NEW.run_id;
    END""",
    # a changed status moves the Step from one count to the other
    """CREATE TRIGGER steps_status_update AFTER UPDATE OF status ON steps
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE run_step_counts SET n = n - 1
        WHERE run_id = OLD.run_id AND status = OLD.status;
        INSERT INTO run_step_counts (run_id, status, n) VALUES (NEW.run_id, NEW.status, 1)
        ON CONFLICT (run_id, status) DO UPDATE SET n = n + 1;
    END""",
)
"""The triggers of schema v9 on ``steps`` that keep the usage counters; a NULL usage
column counts as zero, as in ``SUM``."""


def _v9(conn: sqlite3.Connection) -> None:
    """Run usage kept incrementally, and an index for lineage (NERVE-4042).

    Before v9 a Run's usage and Step counts were sums over all of its Steps, computed
    on every read (and a Run is read several times per Step), and a Run's forked
    children were found by scanning every Run. Now ``run_usage`` holds each Run's sums
    (tokens, USD, wall ms) and ``run_step_counts`` its Steps by status; three triggers
    on ``steps`` apply each insert and each change of a usage column or of the status
    to them, in the statement that makes it and so in its transaction: after any crash
    the counters equal a recomputation (``SqliteStore.integrity``). Steps are never
    deleted, nor moved to another Run. The counters are backfilled from the Steps the
    store holds.

    Two indexes: ``runs_parent`` finds a Run's forks, and ``steps_run_type`` a Run's
    latest Step of a type (an ``fs_op`` reads its Run's file-system usage from the
    last one that succeeded) without visiting its Steps of other types.
    """
    conn.execute(
        "CREATE TABLE run_usage ("
        " run_id TEXT PRIMARY KEY,"
        " tokens_in INTEGER NOT NULL DEFAULT 0,"
        " tokens_out INTEGER NOT NULL DEFAULT 0,"
        " cost_usd REAL NOT NULL DEFAULT 0.0,"
        " wall_ms INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE run_step_counts ("
        " run_id TEXT NOT NULL,"
        " status TEXT NOT NULL,"
        " n INTEGER NOT NULL,"
        " PRIMARY KEY (run_id, status)) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO run_usage (run_id, tokens_in, tokens_out, cost_usd, wall_ms)"
        " SELECT run_id, IFNULL(SUM(tokens_in), 0), IFNULL(SUM(tokens_out), 0),"
        " IFNULL(SUM(cost_usd), 0.0), IFNULL(SUM(wall_ms), 0) FROM steps GROUP BY run_id")
    conn.execute(
        "INSERT INTO run_step_counts (run_id, status, n)"
        " SELECT run_id, status, COUNT(*) FROM steps GROUP BY run_id, status")
    for trigger in _V9_TRIGGERS:
        conn.execute(trigger)
    conn.execute("CREATE INDEX runs_parent ON runs(parent_run_id)"
                 " WHERE parent_run_id IS NOT NULL")
    conn.execute("CREATE INDEX steps_run_type ON steps(run_id, type, ordinal)")


def _v10(conn: sqlite3.Connection) -> None:
    """Steps served by reference to a recording (NERVE-4025).

    ``frames_of`` names the Step whose event rows hold a Step's frames when they are not
    its own (a ``replay`` Step, or a fork's inherited Step); it is NULL for a Step with
    its own log. ``frames_hash`` is the content hash of those frames (the blake3 of their
    SSE bytes): on a Step served by reference, the hash of the frames it names; on a
    Step with its own log, set the first time a Step references it, NULL before. A
    column a store already has is left as it is, so the migration survives renumbering.
    """
    have = {r[1] for r in conn.execute("PRAGMA table_info(steps)")}
    if "frames_of" not in have:
        conn.execute("ALTER TABLE steps ADD COLUMN frames_of TEXT REFERENCES steps(step_id)")
    if "frames_hash" not in have:
        conn.execute("ALTER TABLE steps ADD COLUMN frames_hash TEXT")


def _v11(conn: sqlite3.Connection) -> None:
    """Packed event rows: one row per Step per group commit (STREAM-2011).

    ``events.last_seq`` is the seq of the last frame a row holds; NULL for a row of one
    frame, as every row written before v11 is, so those keep reading as they are. A row
    whose ``last_seq`` is set holds the frames ``seq..last_seq`` of its Step
    (:mod:`orchestrator_core.frame_rows`).

    The table gets a rowid again (``gseq``, in commit order) and ``(step_id, seq)``
    becomes a unique index: a packed row is several hundred bytes, and inserted in
    ``(step_id, seq)`` order among the rows of the other live Steps it made SQLite
    rebalance leaf pages on most commits (about 51 pages written per commit of 16 Steps
    against 27 this way, and half the CPU per frame); now the rows append at the end of
    the table and only the small index entries go in the middle. The rows are copied
    in ``(step_id, seq)`` order. A table that has ``last_seq`` is left as it is.
    """
    have = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    if "last_seq" in have:
        return
    conn.execute(
        "CREATE TABLE events_v11 ("
        " gseq INTEGER PRIMARY KEY,"
        " step_id TEXT NOT NULL REFERENCES steps(step_id),"
        " seq INTEGER NOT NULL,"
        " run_id TEXT NOT NULL,"
        " type TEXT NOT NULL,"
        " data BLOB NOT NULL,"
        " last_seq INTEGER)")
    conn.execute(
        "INSERT INTO events_v11 (step_id, seq, run_id, type, data)"
        " SELECT step_id, seq, run_id, type, data FROM events ORDER BY step_id, seq")
    conn.execute("DROP TABLE events")
    conn.execute("ALTER TABLE events_v11 RENAME TO events")
    conn.execute("CREATE UNIQUE INDEX events_step_seq ON events(step_id, seq)")


def _v12(conn: sqlite3.Connection) -> None:
    """Indexes for the navigation lists (NERVE-4061).

    Each list is one index range read in creation order: ``flows_tenant_order`` pages a
    tenant's Flows and ``runs_flow_*`` a Flow's Runs by rowid, one index per combination
    of the ``mode`` and ``status`` filters. ``run_labels`` holds one row per label of a
    Run, ``(flow_id, key, value, run_rowid)``, kept by an insert trigger on ``runs`` (a
    Run's labels never change) and filled here for the Runs that exist, so a ``label``
    filter reads only the matching Runs.
    """
    conn.execute("CREATE INDEX flows_tenant_order ON flows(tenant)")
    conn.execute("CREATE INDEX runs_flow_order ON runs(flow_id)")
    conn.execute("CREATE INDEX runs_flow_mode ON runs(flow_id, mode)")
    conn.execute("CREATE INDEX runs_flow_status ON runs(flow_id, status)")
    conn.execute("CREATE INDEX runs_flow_mode_status ON runs(flow_id, mode, status)")
    conn.execute(
        "CREATE TABLE run_labels ("
        " flow_id TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " value TEXT NOT NULL,"
        " run_rowid INTEGER NOT NULL,"
        " PRIMARY KEY (flow_id, key, value, run_rowid)) WITHOUT ROWID")
    labels_of = ("SELECT {r}.flow_id, j.key, j.value, {r}.rowid"
                 " FROM json_each({r}.body, '$.labels') AS j WHERE j.type = 'text'")
    conn.execute("INSERT INTO run_labels (flow_id, key, value, run_rowid) "
                 + labels_of.format(r="runs").replace(" FROM ", " FROM runs, ", 1))
    conn.execute("CREATE TRIGGER runs_labels_insert AFTER INSERT ON runs BEGIN"
                 " INSERT OR IGNORE INTO run_labels (flow_id, key, value, run_rowid) "
                 + labels_of.format(r="NEW") + "; END")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flows, runs, steps (with the idempotency key), events", _v1),
    Migration(2, "tenant on flows and runs; a flow hash is unique per tenant", _v2),
    Migration(3, "facts, one order per run", _v3),
    Migration(4, "checkpoints and run lineage", _v4),
    Migration(5, "the event log keyed by (step_id, seq), without rowid", _v5),
    Migration(6, "steps.ordinal, the step's position in its run", _v6),
    Migration(7, "engine builds and their settings", _v7),
    Migration(8, "flows re-addressed under RFC 8785, old addresses as aliases", _v8),
    Migration(9, "run usage counters kept by triggers; lineage, step type indexes",
              _v9),
    Migration(10, "steps served by reference: frames_of, frames_hash", _v10),
    Migration(11, "packed event rows: one row per step per group commit", _v11),
    Migration(12, "navigation list indexes; run labels kept by a trigger", _v12),
)
"""Every migration, in order; entry ``i`` leaves the database at version ``i + 1``."""

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The version :func:`migrate` brings a database to by default (12)."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply, in order, every migration above the database's version up to ``target``
    (NERVE-4041).

    Each migration and its ``user_version`` bump are one transaction. A database already
    at or above ``target`` is left as it is. A ``target`` below :data:`SCHEMA_VERSION` is
    for tests that simulate an older server.

    Args:
        conn: an autocommit connection (``isolation_level=None``) with no open
            transaction.
        target: the version to stop at, ``0..SCHEMA_VERSION``.

    Returns:
        The versions applied, ascending (empty when none was due).

    Raises:
        ValueError: ``target`` is outside ``0..SCHEMA_VERSION``.
        sqlite3.Error: a migration failed; it was rolled back, the ones before it stay.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"schema version {target} is not in 0..{SCHEMA_VERSION}")
    applied: list[int] = []
    for migration in MIGRATIONS[schema_version(conn):target]:
        with _transaction(conn):
            migration.apply(conn)
            conn.execute(f"PRAGMA user_version={migration.version:d}")
        applied.append(migration.version)
    return applied
