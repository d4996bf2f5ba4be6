"""The embedded store's LLM job records (NERVE-4083, NERVE-4086).

Three tables of schema v13: ``llm_attachments`` holds each tenant's attachment bytes once,
keyed by ``(tenant, sha256)``; ``llm_jobs`` holds one row per job (an ``llm_call`` Step
enqueued through ``POST /v1/llm/jobs``) with its metadata and the names, hashes and
sizes of its attachments; ``llm_tenant_runs`` names the Run the server keeps for each
tenant's jobs that name none. A job and the attachments it brings are written in one
transaction. :class:`SqliteStore` mixes this class in (after :class:`ListQueries`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence

import msgspec

from orchestrator_core.rows import LlmJobRow
from orchestrator_core.store_lists import ListQueries

__all__ = ["JobQueries"]


_COLUMNS = ("step_id", "tenant", "run_id", "model", "enqueued_at", "job_hash", "metadata",
            "attachments")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM llm_jobs WHERE step_id = ?"  # noqa: S608 - constant column names, no input
_INSERT = (f"INSERT OR IGNORE INTO llm_jobs ({', '.join(_COLUMNS)})"  # noqa: S608 - constant column names, no input
           f" VALUES ({', '.join('?' for _ in _COLUMNS)})")


class JobQueries(ListQueries):
    """The ``Store`` job methods over the store's connection."""

    _conn: sqlite3.Connection

    @contextlib.contextmanager
    def _job_tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def insert_llm_job(self, row: LlmJobRow,
                       blobs: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Store a job record and its attachments' bytes, in one transaction.

        Each ``(sha256 hex, bytes)`` is stored once per tenant (an existing one is kept).

        Returns:
            True when the job record was created, False when its Step already had one
            (nothing is changed then).
        """
        with self._job_tx() as conn:
            created = conn.execute(_INSERT, msgspec.structs.astuple(row)).rowcount == 1
            if created:
                conn.executemany(
                    "INSERT OR IGNORE INTO llm_attachments (tenant, sha256, size, data,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    [(row.tenant, sha, len(data), data, row.enqueued_at)
                     for sha, data in blobs])
        return created

    def get_llm_job(self, step_id: str) -> LlmJobRow | None:
        """The job record of a Step, of any tenant (the caller checks it), or None."""
        values = self._conn.execute(_SELECT, (step_id,)).fetchone()
        return None if values is None else LlmJobRow(*values)

    def get_attachment(self, tenant: str, sha256: str) -> bytes | None:
        """The tenant's attachment bytes with this hex sha256, or None."""
        row = self._conn.execute("SELECT data FROM llm_attachments WHERE tenant = ? AND"
                                 " sha256 = ?", (tenant, sha256)).fetchone()
        return None if row is None else bytes(row[0])

    def tenant_job_run(self, tenant: str) -> str | None:
        """The run_id of the Run kept for the tenant's jobs, or None."""
        row = self._conn.execute("SELECT run_id FROM llm_tenant_runs WHERE tenant = ?",
                                 (tenant,)).fetchone()
        return None if row is None else str(row[0])

    def set_tenant_job_run(self, tenant: str, run_id: str) -> None:
        """Name the Run kept for the tenant's jobs (replacing the one named before)."""
        self._conn.execute("INSERT INTO llm_tenant_runs (tenant, run_id) VALUES (?, ?)"
                           " ON CONFLICT (tenant) DO UPDATE SET run_id = excluded.run_id",
                           (tenant, run_id))
