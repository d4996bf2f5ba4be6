"""Schema migrations v9 and later of the SQLite store (NERVE-4041); ordered and applied
by :mod:`orchestrator_core.migrations`."""

from __future__ import annotations

import sqlite3

__all__ = ["v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17"]


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


def v9(conn: sqlite3.Connection) -> None:
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


def v10(conn: sqlite3.Connection) -> None:
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


def v11(conn: sqlite3.Connection) -> None:
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


def v12(conn: sqlite3.Connection) -> None:
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


def v13(conn: sqlite3.Connection) -> None:
    """LLM job records (NERVE-4083, NERVE-4086).

    ``llm_attachments`` stores each tenant's attachment bytes once, content-addressed by
    ``(tenant, sha256)``; ``llm_jobs`` one row per job: its Step, tenant, Run, model,
    enqueue time, identity hash, metadata and attachment references (JSON);
    ``llm_tenant_runs`` the Run the server keeps for each tenant's jobs.
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS llm_attachments ("
        " tenant TEXT NOT NULL,"
        " sha256 TEXT NOT NULL,"
        " size INTEGER NOT NULL,"
        " data BLOB NOT NULL,"
        " created_at TEXT NOT NULL,"
        " PRIMARY KEY (tenant, sha256))")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS llm_jobs ("
        " step_id TEXT PRIMARY KEY REFERENCES steps(step_id),"
        " tenant TEXT NOT NULL,"
        " run_id TEXT NOT NULL REFERENCES runs(run_id),"
        " model TEXT NOT NULL,"
        " enqueued_at TEXT NOT NULL,"
        " job_hash TEXT NOT NULL,"
        " metadata TEXT,"
        " attachments TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS llm_tenant_runs ("
        " tenant TEXT PRIMARY KEY,"
        " run_id TEXT NOT NULL REFERENCES runs(run_id))")


def v14(conn: sqlite3.Connection) -> None:
    """The run log, closed Runs and retried Steps (NERVE-4100, NERVE-4103, NERVE-4105).

    ``run_log`` gives every durable frame of a Run a run position, 0, 1, ... in commit
    order: a row ``(run_id, pos, step_id, seq, n)`` says that the frames ``seq ..
    seq + n - 1`` of the Step are at the positions ``pos .. pos + n - 1``. A trigger
    adds one row per ``events`` row in the statement that inserts it (a packed row is
    one row here too), and one per Step inserted already finished by reference to
    another Step's frames (``frames_of``, NERVE-4025), so the positions are durable with
    the frames and cost one index step each. The rows of the Runs that exist are filled
    Step by Step in submission order (their commit order is not known).

    ``runs`` gets ``closed_at`` and ``summary``; ``steps`` gets ``attempt`` and
    ``retry_of``, and the idempotency key becomes ``UNIQUE(run_id, client_token,
    attempt)`` (every existing Step is attempt 0).
    """
    conn.execute(
        "CREATE TABLE run_log ("
        " run_id TEXT NOT NULL,"
        " pos INTEGER NOT NULL,"
        " step_id TEXT NOT NULL,"
        " seq INTEGER NOT NULL,"
        " n INTEGER NOT NULL,"
        " PRIMARY KEY (run_id, pos)) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO run_log (run_id, pos, step_id, seq, n)"
        " SELECT run_id, SUM(n) OVER w - n, step_id, seq, n FROM ("
        "  SELECT e.run_id, e.step_id, e.seq, IFNULL(e.last_seq, e.seq) - e.seq + 1 AS n,"
        "   s.ordinal AS o FROM events e JOIN steps s ON s.step_id = e.step_id"
        "  UNION ALL SELECT run_id, step_id, 0, last_seq + 1, ordinal FROM steps"
        "   WHERE frames_of IS NOT NULL AND last_seq >= 0)"
        " WINDOW w AS (PARTITION BY run_id ORDER BY o, seq ROWS UNBOUNDED PRECEDING)")
    conn.execute(
        "CREATE TRIGGER events_run_log AFTER INSERT ON events BEGIN"
        " INSERT INTO run_log (run_id, pos, step_id, seq, n) VALUES (NEW.run_id,"
        # the Run's next position: one step down the run_log key
        " IFNULL((SELECT pos + n FROM run_log WHERE run_id = NEW.run_id"
        " ORDER BY pos DESC LIMIT 1), 0),"
        " NEW.step_id, NEW.seq, IFNULL(NEW.last_seq, NEW.seq) - NEW.seq + 1); END")
    conn.execute(
        "CREATE TRIGGER steps_served_run_log AFTER INSERT ON steps"
        " WHEN NEW.frames_of IS NOT NULL AND NEW.last_seq >= 0 BEGIN"
        " INSERT INTO run_log (run_id, pos, step_id, seq, n) VALUES (NEW.run_id,"
        " IFNULL((SELECT pos + n FROM run_log WHERE run_id = NEW.run_id"
        " ORDER BY pos DESC LIMIT 1), 0),"
        " NEW.step_id, 0, NEW.last_seq + 1); END")
    conn.execute("ALTER TABLE runs ADD COLUMN closed_at TEXT")
    conn.execute("ALTER TABLE runs ADD COLUMN summary TEXT")
    conn.execute("ALTER TABLE steps ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE steps ADD COLUMN retry_of TEXT")
    conn.execute("DROP INDEX IF EXISTS idx_steps_run_id_client_token")
    conn.execute("CREATE UNIQUE INDEX steps_run_token_attempt"
                 " ON steps(run_id, client_token, attempt)")


def v15(conn: sqlite3.Connection) -> None:
    """Rendered prompts: the exact text an engine was sent, content-addressed (NERVE-4091).

    ``prompt_texts`` holds each distinct text once, under ``b3:`` + hex blake3 of its
    UTF-8 bytes (the ``rendered_hash`` of the provenance of the Steps that sent it). A
    table a store already has is left as it is, so the migration survives renumbering.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS prompt_texts ("
                 " hash TEXT PRIMARY KEY,"
                 " text TEXT NOT NULL) WITHOUT ROWID")


def v16(conn: sqlite3.Connection) -> None:
    """Indexes for the tenant-wide list of Runs, ``GET /v1/runs`` (REC-7051).

    Like v12's per-Flow lists, one index range read in creation order: ``runs_tenant_*``
    page a tenant's Runs by rowid, one index per combination of the ``mode`` and
    ``status`` filters. ``run_tenant_labels`` holds one row per label of a Run keyed by
    its tenant, ``(tenant, key, value, run_rowid)``, kept by an insert trigger on
    ``runs`` (a Run's labels and tenant never change) and filled here for the Runs that
    exist, so a ``label`` filter reads only the tenant's matching Runs.
    """
    conn.execute("CREATE INDEX runs_tenant_order ON runs(tenant)")
    conn.execute("CREATE INDEX runs_tenant_mode ON runs(tenant, mode)")
    conn.execute("CREATE INDEX runs_tenant_status ON runs(tenant, status)")
    conn.execute("CREATE INDEX runs_tenant_mode_status ON runs(tenant, mode, status)")
    conn.execute(
        "CREATE TABLE run_tenant_labels ("
        " tenant TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " value TEXT NOT NULL,"
        " run_rowid INTEGER NOT NULL,"
        " PRIMARY KEY (tenant, key, value, run_rowid)) WITHOUT ROWID")
    labels_of = ("SELECT {r}.tenant, j.key, j.value, {r}.rowid"
                 " FROM json_each({r}.body, '$.labels') AS j WHERE j.type = 'text'")
    conn.execute("INSERT INTO run_tenant_labels (tenant, key, value, run_rowid) "
                 + labels_of.format(r="runs").replace(" FROM ", " FROM runs, ", 1))
    conn.execute("CREATE TRIGGER runs_tenant_labels_insert AFTER INSERT ON runs BEGIN"
                 " INSERT OR IGNORE INTO run_tenant_labels (tenant, key, value, run_rowid) "
                 + labels_of.format(r="NEW") + "; END")


def v17(conn: sqlite3.Connection) -> None:
    """The exact-match cache's index (REC-7102).

    ``steps.cache_key`` holds the cache key of a ``record`` LLM Step that ran on an
    engine: ``b3:`` of its tenant, input and determinism inputs. The partial index holds
    only the succeeded Steps that have one, so a lookup is one index probe and a Step
    enters it in the transaction that commits its ``end`` frame (its status changes
    there); every other Step costs the index nothing.
    """
    conn.execute("ALTER TABLE steps ADD COLUMN cache_key TEXT")
    conn.execute("CREATE INDEX steps_cache_key ON steps(cache_key)"
                 " WHERE cache_key IS NOT NULL AND status = 'succeeded'")
