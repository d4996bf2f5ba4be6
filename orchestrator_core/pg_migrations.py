"""The PostgreSQL schema, version by version: one ordered table of migrations (PG-9001).

The schema's version is the one row of its ``schema_version`` table (0 before the first
migration). :func:`migrate` applies every migration above it, in order, each in its own
transaction together with its version bump, under a transaction-level advisory lock of
the schema, so that several processes opening one database at once apply each version
exactly once. The versions are PostgreSQL's own (a new database starts at the SQLite
schema's final shape, v16, without its history):

==  ================================================================================
v1  flows, aliases, runs, steps (idempotency key ``UNIQUE(run_id, client_token,
    attempt)``, ordinals), events (packed rows), facts, checkpoints, engine builds,
    rendered prompts; each creation-ordered table has an identity column ``rid``
v2  run usage counters kept by triggers on ``steps`` (NERVE-4042)
v3  run labels by Flow and by tenant, and the list indexes (NERVE-4061, REC-7051)
v4  the run log, its positions kept by triggers in commit order (NERVE-4100)
v5  LLM job records, attachments, each tenant's job Run (NERVE-4083)
v7  the processes sharing the schema (heartbeat, lease), each Step's owner, the budget
    reservations of every process, the slots of shared remote replicas (PG-9100,
    PG-9106, PG-9107)
v8  a cancel requested through another process than the Step's owner (PG-9111)
==  ================================================================================

Text that must keep its exact characters and may hold U+0000 (a rendered prompt, a label)
is BYTEA holding UTF-8, since PostgreSQL text cannot hold U+0000. Every other text column
is ``TEXT COLLATE "C"``: byte order, as SQLite compares.
"""

from __future__ import annotations

from typing import NamedTuple

import psycopg
from psycopg import sql

__all__ = ["PG_MIGRATIONS", "PG_SCHEMA_VERSION", "PgMigration", "migrate", "schema_version"]

T = 'TEXT COLLATE "C"'
"""A text column compared byte by byte."""


class PgMigration(NamedTuple):
    """One schema version.

    Attributes:
        version: the version it leaves behind (1, 2, ...).
        summary: what it changes, in one line.
        statements: the DDL, run in order inside the migration's transaction.
    """

    version: int
    summary: str
    statements: tuple[str, ...]


_V1 = (
    f"CREATE TABLE flows (rid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
    f" flow_id {T} PRIMARY KEY, hash {T} NOT NULL, ast_ir {T} NOT NULL, tools {T} NOT NULL,"
    f" config {T} NOT NULL, labels {T}, created_at {T}, tenant {T} NOT NULL DEFAULT 'default',"
    f" UNIQUE (tenant, hash))",
    "CREATE INDEX flows_tenant_order ON flows (tenant, rid)",
    f"CREATE TABLE flow_aliases (alias {T} NOT NULL, tenant {T} NOT NULL,"
    f" flow_id {T} NOT NULL REFERENCES flows (flow_id), PRIMARY KEY (alias, tenant))",
    f"CREATE TABLE runs (rid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
    f" run_id {T} PRIMARY KEY, flow_id {T} NOT NULL REFERENCES flows (flow_id),"
    f" flow_hash {T}, mode {T} NOT NULL, seed BIGINT NOT NULL, replay_of {T},"
    f" body {T} NOT NULL, policy_hash {T}, status {T} NOT NULL, created_at {T},"
    f" tenant {T} NOT NULL DEFAULT 'default', parent_run_id {T}, from_checkpoint {T},"
    f" closed_at {T}, summary {T})",
    "CREATE INDEX runs_parent ON runs (parent_run_id, rid) WHERE parent_run_id IS NOT NULL",
    f"CREATE TABLE steps (rid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
    f" step_id {T} PRIMARY KEY, run_id {T} NOT NULL REFERENCES runs (run_id),"
    f" type {T} NOT NULL, client_token {T} NOT NULL, input {T} NOT NULL,"
    f" input_hash {T} NOT NULL, placement {T}, status {T} NOT NULL, seed BIGINT,"
    f" created_at {T}, tokens_in BIGINT DEFAULT 0, tokens_out BIGINT DEFAULT 0,"
    f" cost_usd DOUBLE PRECISION DEFAULT 0.0, wall_ms BIGINT DEFAULT 0, provenance {T},"
    f" error {T}, last_seq BIGINT NOT NULL DEFAULT -1, replay_of_step {T},"
    f" ordinal BIGINT NOT NULL, frames_of {T} REFERENCES steps (step_id), frames_hash {T},"
    f" attempt INTEGER NOT NULL DEFAULT 0, retry_of {T},"
    f" CONSTRAINT steps_run_token_attempt UNIQUE (run_id, client_token, attempt),"
    f" CONSTRAINT steps_run_ordinal UNIQUE (run_id, ordinal))",
    "CREATE INDEX steps_run_unfinished ON steps (run_id, ordinal)"
    " WHERE status IN ('queued', 'running')",
    "CREATE INDEX steps_unfinished ON steps (rid) WHERE status IN ('queued', 'running')",
    "CREATE INDEX steps_run_type ON steps (run_id, type, status, ordinal)",
    f"CREATE TABLE events (step_id {T} NOT NULL REFERENCES steps (step_id),"
    f" seq BIGINT NOT NULL, run_id {T} NOT NULL, type {T} NOT NULL, data BYTEA NOT NULL,"
    f" last_seq BIGINT, PRIMARY KEY (step_id, seq))",
    f"CREATE TABLE facts (rid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
    f" fact_id {T} PRIMARY KEY, run_id {T} NOT NULL REFERENCES runs (run_id),"
    f" flow_id {T} NOT NULL, seq BIGINT NOT NULL, type {T} NOT NULL,"
    f" schema_uri {T} NOT NULL, data {T} NOT NULL, emitted_by_step {T}, ts {T} NOT NULL,"
    f" UNIQUE (run_id, seq))",
    "CREATE INDEX facts_flow_order ON facts (flow_id, rid)",
    "CREATE INDEX facts_flow_type ON facts (flow_id, type, rid)",
    f"CREATE TABLE checkpoints (rid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,"
    f" checkpoint_id {T} PRIMARY KEY, run_id {T} NOT NULL REFERENCES runs (run_id),"
    f" step_id {T}, hash {T} NOT NULL, snapshot {T} NOT NULL, cursor {T} NOT NULL,"
    f" ts {T} NOT NULL)",
    "CREATE INDEX checkpoints_run_order ON checkpoints (run_id, rid)",
    f"CREATE TABLE engine_builds (fingerprint {T} PRIMARY KEY, settings {T} NOT NULL)",
    f"CREATE TABLE prompt_texts (hash {T} PRIMARY KEY, text BYTEA NOT NULL)",
)

_V2 = (
    f"CREATE TABLE run_usage (run_id {T} PRIMARY KEY, tokens_in BIGINT NOT NULL DEFAULT 0,"
    " tokens_out BIGINT NOT NULL DEFAULT 0, cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0.0,"
    " wall_ms BIGINT NOT NULL DEFAULT 0)",
    f"CREATE TABLE run_step_counts (run_id {T} NOT NULL, status {T} NOT NULL,"
    " n BIGINT NOT NULL, PRIMARY KEY (run_id, status))",
    # an inserted Step adds its usage (usually zero) and one to the count of its status
    """CREATE FUNCTION steps_usage_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        INSERT INTO run_usage AS u (run_id, tokens_in, tokens_out, cost_usd, wall_ms)
        VALUES (NEW.run_id, COALESCE(NEW.tokens_in, 0), COALESCE(NEW.tokens_out, 0),
                COALESCE(NEW.cost_usd, 0.0), COALESCE(NEW.wall_ms, 0))
        ON CONFLICT (run_id) DO UPDATE SET
            tokens_in = u.tokens_in + EXCLUDED.tokens_in,
            tokens_out = u.tokens_out + EXCLUDED.tokens_out,
            cost_usd = u.cost_usd + EXCLUDED.cost_usd,
            wall_ms = u.wall_ms + EXCLUDED.wall_ms;
        INSERT INTO run_step_counts AS c (run_id, status, n) VALUES (NEW.run_id, NEW.status, 1)
        ON CONFLICT (run_id, status) DO UPDATE SET n = c.n + 1;
        RETURN NULL; END $$""",
    "CREATE TRIGGER steps_a_usage_insert AFTER INSERT ON steps FOR EACH ROW"
    " EXECUTE FUNCTION steps_usage_insert()",
    # a changed usage column adds the difference (the insert made the Run's row)
    """CREATE FUNCTION steps_usage_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        UPDATE run_usage SET
            tokens_in = tokens_in + COALESCE(NEW.tokens_in, 0) - COALESCE(OLD.tokens_in, 0),
            tokens_out = tokens_out + COALESCE(NEW.tokens_out, 0) - COALESCE(OLD.tokens_out, 0),
            cost_usd = cost_usd + COALESCE(NEW.cost_usd, 0.0) - COALESCE(OLD.cost_usd, 0.0),
            wall_ms = wall_ms + COALESCE(NEW.wall_ms, 0) - COALESCE(OLD.wall_ms, 0)
        WHERE run_id = NEW.run_id;
        RETURN NULL; END $$""",
    "CREATE TRIGGER steps_a_usage_update AFTER UPDATE OF tokens_in, tokens_out, cost_usd,"
    " wall_ms ON steps FOR EACH ROW WHEN (OLD.tokens_in IS DISTINCT FROM NEW.tokens_in"
    " OR OLD.tokens_out IS DISTINCT FROM NEW.tokens_out"
    " OR OLD.cost_usd IS DISTINCT FROM NEW.cost_usd OR OLD.wall_ms IS DISTINCT FROM"
    " NEW.wall_ms) EXECUTE FUNCTION steps_usage_update()",
    # a changed status moves the Step from one count to the other
    """CREATE FUNCTION steps_status_update() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        UPDATE run_step_counts SET n = n - 1 WHERE run_id = OLD.run_id AND status = OLD.status;
        INSERT INTO run_step_counts AS c (run_id, status, n) VALUES (NEW.run_id, NEW.status, 1)
        ON CONFLICT (run_id, status) DO UPDATE SET n = c.n + 1;
        RETURN NULL; END $$""",
    "CREATE TRIGGER steps_b_status_update AFTER UPDATE OF status ON steps FOR EACH ROW"
    " WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION steps_status_update()",
)

_V3 = (
    "CREATE INDEX runs_flow_order ON runs (flow_id, rid)",
    "CREATE INDEX runs_flow_mode ON runs (flow_id, mode, rid)",
    "CREATE INDEX runs_flow_status ON runs (flow_id, status, rid)",
    "CREATE INDEX runs_flow_mode_status ON runs (flow_id, mode, status, rid)",
    "CREATE INDEX runs_tenant_order ON runs (tenant, rid)",
    "CREATE INDEX runs_tenant_mode ON runs (tenant, mode, rid)",
    "CREATE INDEX runs_tenant_status ON runs (tenant, status, rid)",
    "CREATE INDEX runs_tenant_mode_status ON runs (tenant, mode, status, rid)",
    # written by the store with the Run, from its body's labels (UTF-8 bytes)
    f"CREATE TABLE run_labels (flow_id {T} NOT NULL, key BYTEA NOT NULL,"
    " value BYTEA NOT NULL, run_rowid BIGINT NOT NULL,"
    " PRIMARY KEY (flow_id, key, value, run_rowid))",
    f"CREATE TABLE run_tenant_labels (tenant {T} NOT NULL, key BYTEA NOT NULL,"
    " value BYTEA NOT NULL, run_rowid BIGINT NOT NULL,"
    " PRIMARY KEY (tenant, key, value, run_rowid))",
)

_V4 = (
    f"CREATE TABLE run_log (run_id {T} NOT NULL, pos BIGINT NOT NULL, step_id {T} NOT NULL,"
    " seq BIGINT NOT NULL, n BIGINT NOT NULL, PRIMARY KEY (run_id, pos))",
    # one past each Run's last position; its row lock, held to COMMIT, orders the
    # commits of one Run, so positions follow commit order across processes
    f"CREATE TABLE run_log_heads (run_id {T} PRIMARY KEY, next_pos BIGINT NOT NULL)",
    """CREATE FUNCTION run_log_add(run text, step text, first bigint, n bigint)
    RETURNS void LANGUAGE plpgsql AS $$ DECLARE at bigint; BEGIN
        INSERT INTO run_log_heads AS h (run_id, next_pos) VALUES (run, n)
        ON CONFLICT (run_id) DO UPDATE SET next_pos = h.next_pos + EXCLUDED.next_pos
        RETURNING h.next_pos - n INTO at;
        INSERT INTO run_log (run_id, pos, step_id, seq, n) VALUES (run, at, step, first, n);
        END $$""",
    """CREATE FUNCTION events_run_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        PERFORM run_log_add(NEW.run_id, NEW.step_id, NEW.seq,
                            COALESCE(NEW.last_seq, NEW.seq) - NEW.seq + 1);
        RETURN NULL; END $$""",
    "CREATE TRIGGER events_run_log AFTER INSERT ON events FOR EACH ROW"
    " EXECUTE FUNCTION events_run_log()",
    """CREATE FUNCTION steps_served_run_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
        PERFORM run_log_add(NEW.run_id, NEW.step_id, 0, NEW.last_seq + 1);
        RETURN NULL; END $$""",
    "CREATE TRIGGER steps_served_run_log AFTER INSERT ON steps FOR EACH ROW"
    " WHEN (NEW.frames_of IS NOT NULL AND NEW.last_seq >= 0)"
    " EXECUTE FUNCTION steps_served_run_log()",
)

_V5 = (
    f"CREATE TABLE llm_attachments (tenant {T} NOT NULL, sha256 {T} NOT NULL,"
    f" size BIGINT NOT NULL, data BYTEA NOT NULL, created_at {T} NOT NULL,"
    " PRIMARY KEY (tenant, sha256))",
    f"CREATE TABLE llm_jobs (step_id {T} PRIMARY KEY REFERENCES steps (step_id),"
    f" tenant {T} NOT NULL, run_id {T} NOT NULL REFERENCES runs (run_id),"
    f" model {T} NOT NULL, enqueued_at {T} NOT NULL, job_hash {T} NOT NULL, metadata {T},"
    f" attachments {T} NOT NULL)",
    f"CREATE TABLE llm_tenant_runs (tenant {T} PRIMARY KEY,"
    f" run_id {T} NOT NULL REFERENCES runs (run_id))",
)

_V6 = (
    # the exact-match cache (REC-7102): the partial index holds only succeeded Steps
    f"ALTER TABLE steps ADD COLUMN cache_key {T}",
    "CREATE INDEX steps_cache_key ON steps (cache_key)"
    " WHERE cache_key IS NOT NULL AND status = 'succeeded'",
)

_V7 = (
    f"CREATE TABLE processes (process_id {T} PRIMARY KEY,"
    " started TIMESTAMPTZ NOT NULL DEFAULT now(), heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),"
    f" lease_ms BIGINT NOT NULL CHECK (lease_ms > 0), node {T} NOT NULL DEFAULT '')",
    f"ALTER TABLE steps ADD COLUMN owner {T}",
    "ALTER TABLE steps ALTER COLUMN owner"
    " SET DEFAULT NULLIF(current_setting('orchestratord.process', true), '')",
    "CREATE INDEX steps_owner_unfinished ON steps (owner) WHERE status IN ('queued', 'running')",
    f"CREATE TABLE reservations (step_id {T} PRIMARY KEY, run_id {T} NOT NULL, owner {T} NOT NULL,"
    " tokens_in BIGINT NOT NULL, tokens_out BIGINT NOT NULL, cost_usd DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX reservations_run ON reservations (run_id)",
    f"CREATE TABLE replica_slots (replica {T} NOT NULL, slot INTEGER NOT NULL, holder {T},"
    " PRIMARY KEY (replica, slot))",
)
"""PG-9100, PG-9106, PG-9107: the processes sharing the schema, each Step's owner, the
budget reservations every process holds, and the slots of shared remote replicas. A
Step's owner is the ``orchestratord.process`` setting of the connection that inserted it
(each store's connections set it); rows stored before v7 have none, so they count as
orphans."""

_V8 = (
    f"ALTER TABLE steps ADD COLUMN cancel_requested {T}",
    "CREATE INDEX steps_cancel_requested ON steps (owner)"
    " WHERE cancel_requested IS NOT NULL AND status IN ('queued', 'running')",
)
"""PG-9111: the reason of a cancel asked of a process that does not run the Step, kept
until its owner acts on it (its listener reads the ones it missed when it reconnects)."""

PG_MIGRATIONS: tuple[PgMigration, ...] = (
    PgMigration(1, "flows, runs, steps, events, facts, checkpoints, builds, prompts", _V1),
    PgMigration(2, "run usage counters kept by triggers", _V2),
    PgMigration(3, "run labels and the list indexes", _V3),
    PgMigration(4, "the run log, positions in commit order", _V4),
    PgMigration(5, "llm job records, attachments, each tenant's job run", _V5),
    PgMigration(6, "the exact-match cache's key and partial index", _V6),
    PgMigration(7, "processes with heartbeats, each Step's owner (PG-9100)", _V7),
    PgMigration(8, "cancels requested through another process (PG-9111)", _V8),
)
"""Every migration, in order; entry ``i`` leaves the schema at version ``i + 1``."""

PG_SCHEMA_VERSION = PG_MIGRATIONS[-1].version
"""The version :func:`migrate` brings a schema to by default (8)."""


def _lock(conn: psycopg.Connection[tuple[object, ...]], schema: str) -> None:
    """Take the schema's migration lock until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('orchestratord.migrate.' || %s))",
                 (schema,))


def schema_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """The version of the schema first on the connection's ``search_path`` (0 when it
    has no ``schema_version`` table)."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return 0 if row is None else int(str(row[0]))


def migrate(conn: psycopg.Connection[tuple[object, ...]], schema: str,
            target: int = PG_SCHEMA_VERSION,
            migrations: tuple[PgMigration, ...] | None = None) -> list[int]:
    """Create ``schema`` if needed and apply, in order, every migration above its version
    up to ``target`` [PG-9001].

    Each migration and its version bump are one transaction, taken under the schema's
    advisory lock (the version is read again under it, so concurrent openers apply each
    version once). A schema already at or above ``target`` is left as it is.

    Args:
        conn: an autocommit connection whose ``search_path`` is ``schema``.
        schema: the schema's name (an identifier; it is quoted).
        target: the version to stop at, ``0..PG_SCHEMA_VERSION``.
        migrations: the table to apply (default :data:`PG_MIGRATIONS`; tests pass
            another).

    Returns:
        The versions applied, ascending (empty when none was due).

    Raises:
        ValueError: ``target`` is outside ``0..PG_SCHEMA_VERSION``.
        psycopg.Error: a migration failed; it was rolled back, the ones before it stay.
    """
    table = PG_MIGRATIONS if migrations is None else migrations
    if not 0 <= target <= len(table):
        raise ValueError(f"schema version {target} is not in 0..{len(table)}")
    with conn.transaction():
        _lock(conn, schema)
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if conn.execute("SELECT 1 FROM schema_version").fetchone() is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (0)")
    applied: list[int] = []
    for migration in table[:target]:
        with conn.transaction():
            _lock(conn, schema)
            if schema_version(conn) >= migration.version:
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute("UPDATE schema_version SET version = %s", (migration.version,))
        applied.append(migration.version)
    return applied

