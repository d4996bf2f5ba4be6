"""Schema migrations v1 to v8 of the SQLite store (NERVE-4041); ordered and applied by
:mod:`orchestrator_core.migrations`."""

from __future__ import annotations

import sqlite3

import msgspec
import sqlite_utils

from orchestrator_core.canonical import flow_address

__all__ = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"]


def v1(conn: sqlite3.Connection) -> None:
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


def v2(conn: sqlite3.Connection) -> None:
    """Tenancy: flows and runs belong to a tenant; a flow's hash is unique per tenant."""
    for table in ("flows", "runs"):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN tenant TEXT NOT NULL"
                     " DEFAULT 'default'")
    conn.execute("DROP INDEX IF EXISTS idx_flows_hash")
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS flows_tenant_hash ON flows(tenant, hash)")


def v3(conn: sqlite3.Connection) -> None:
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


def v4(conn: sqlite3.Connection) -> None:
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


def v5(conn: sqlite3.Connection) -> None:
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


def v6(conn: sqlite3.Connection) -> None:
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


def v7(conn: sqlite3.Connection) -> None:
    """Engine builds: each build fingerprint with the settings it hashes, so that a
    refused strict_replay can name the setting that changed (NERVE-4022)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS engine_builds ("
        " fingerprint TEXT PRIMARY KEY,"
        " settings TEXT NOT NULL) WITHOUT ROWID")


def v8(conn: sqlite3.Connection) -> None:
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
