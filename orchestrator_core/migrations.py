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
v12 Navigation list indexes; Run labels kept by a trigger (NERVE-4061)
v13 LLM job records: attachments by (tenant, sha256), jobs, each tenant's job Run (NERVE-4083)
v14 The run log; closed Runs; retried Steps keyed by attempt (NERVE-4100, 4103, 4105)
v15 Rendered prompts, content-addressed: ``prompt_texts`` (NERVE-4091)
v16 The tenant-wide Run list's indexes; Run labels by tenant (REC-7051)
v17 The exact-match cache: ``steps.cache_key``, indexed while succeeded (REC-7102)
==  ================================================================================
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import NamedTuple

from orchestrator_core.migrations_early import v1, v2, v3, v4, v5, v6, v7, v8
from orchestrator_core.migrations_late import v9, v10, v11, v12, v13, v14, v15, v16, v17

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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flows, runs, steps (with the idempotency key), events", v1),
    Migration(2, "tenant on flows and runs; a flow hash is unique per tenant", v2),
    Migration(3, "facts, one order per run", v3),
    Migration(4, "checkpoints and run lineage", v4),
    Migration(5, "the event log keyed by (step_id, seq), without rowid", v5),
    Migration(6, "steps.ordinal, the step's position in its run", v6),
    Migration(7, "engine builds and their settings", v7),
    Migration(8, "flows re-addressed under RFC 8785, old addresses as aliases", v8),
    Migration(9, "run usage counters kept by triggers; lineage, step type indexes",
              v9),
    Migration(10, "steps served by reference: frames_of, frames_hash", v10),
    Migration(11, "packed event rows: one row per step per group commit", v11),
    Migration(12, "navigation list indexes; run labels kept by a trigger", v12),
    Migration(13, "llm job records, attachments, each tenant's job run", v13),
    Migration(14, "run log; closed runs; step attempts in the idempotency key", v14),
    Migration(15, "rendered prompts, content-addressed", v15),
    Migration(16, "tenant-wide run list indexes; run labels by tenant", v16),
    Migration(17, "exact-match cache keys of record steps, indexed", v17),
)
"""Every migration, in order; entry ``i`` leaves the database at version ``i + 1``."""

SCHEMA_VERSION = MIGRATIONS[-1].version
"""The version :func:`migrate` brings a database to by default (13)."""


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
