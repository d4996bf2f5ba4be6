"""The PostgreSQL store's LLM job records, rendered prompts, engine builds and imported
recordings (NERVE-4083, NERVE-4086, NERVE-4091, NERVE-4022, REC-7011; PG-9020).

Rendered prompt texts are BYTEA holding their UTF-8 bytes, so a text holding U+0000 (which
PostgreSQL text refuses) is kept exactly. An import is one transaction, so a failure at
any row leaves nothing behind. :class:`PgStore` mixes this in.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import psycopg

from orchestrator_core.frame_rows import pack
from orchestrator_core.rows import (
    CheckpointRow,
    EventRow,
    FactRow,
    FlowRow,
    LlmJobRow,
    RunRow,
    StepRow,
)
from orchestrator_core.store_pg_base import (
    INSERT_CHECKPOINT,
    INSERT_EVENT,
    INSERT_FACT,
    INSERT_FLOW,
    STEPS,
    PgBase,
)

__all__ = ["PgJobs"]

_JOB_COLS = tuple(LlmJobRow.__struct_fields__)
_JOB_SELECT = f"SELECT {', '.join(_JOB_COLS)} FROM llm_jobs WHERE step_id = %s"  # noqa: S608 - constant names
_JOB_INSERT = (f"INSERT INTO llm_jobs ({', '.join(_JOB_COLS)})"  # noqa: S608 - constant names
               f" VALUES ({', '.join('%s' for _ in _JOB_COLS)}) ON CONFLICT DO NOTHING")
_BUILD = ("INSERT INTO engine_builds (fingerprint, settings) VALUES (%s, %s)"
          " ON CONFLICT DO NOTHING")
_GROUP = 256
"""Frames per packed row at most in an import (the default ``commit_max_frames``)."""


class PgJobs(PgBase):
    """The ``Store`` job, prompt, build and import methods over the pool."""

    def insert_llm_job(self, row: LlmJobRow,
                       blobs: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Store a job record and each ``(sha256 hex, bytes)`` attachment once per tenant,
        in one transaction; False (nothing changed) when the Step already has a job."""
        with self._tx() as conn:
            created = conn.execute(_JOB_INSERT, msgspec.structs.astuple(row)).rowcount == 1
            if created and blobs:
                conn.cursor().executemany(
                    "INSERT INTO llm_attachments (tenant, sha256, size, data, created_at)"
                    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    [(row.tenant, sha, len(data), data, row.enqueued_at)
                     for sha, data in blobs])
        return created

    def get_llm_job(self, step_id: str) -> LlmJobRow | None:
        """The job record of a Step, of any tenant (the caller checks it), or None."""
        return self._one(LlmJobRow, _JOB_SELECT, (step_id,))

    def get_attachment(self, tenant: str, sha256: str) -> bytes | None:
        """The tenant's attachment bytes with this hex sha256, or None."""
        row = self._first("SELECT data FROM llm_attachments WHERE tenant = %s AND"
                          " sha256 = %s", (tenant, sha256))
        return None if row is None else bytes(row[0])

    def tenant_job_run(self, tenant: str) -> str | None:
        """The run_id of the Run kept for the tenant's jobs, or None."""
        row = self._first("SELECT run_id FROM llm_tenant_runs WHERE tenant = %s", (tenant,))
        return None if row is None else str(row[0])

    def set_tenant_job_run(self, tenant: str, run_id: str) -> None:
        """Name the Run kept for the tenant's jobs (replacing the one named before)."""
        self._exec("INSERT INTO llm_tenant_runs (tenant, run_id) VALUES (%s, %s)"
                   " ON CONFLICT (tenant) DO UPDATE SET run_id = EXCLUDED.run_id",
                   (tenant, run_id))

    # -- rendered prompts and engine builds --------------------------------------------

    def record_prompt_text(self, text_hash: str, text: str) -> None:
        """Keep ``text`` under ``text_hash``; a hash already kept is left as it is."""
        self._exec("INSERT INTO prompt_texts (hash, text) VALUES (%s, %s)"
                   " ON CONFLICT DO NOTHING", (text_hash, text.encode()))

    def cached_step(self, tenant: str, cache_key: str) -> StepRow | None:
        """The earliest succeeded Step of ``tenant`` stored with ``cache_key``, or None
        (REC-7102): one probe of the partial index ``steps_cache_key``, then of the Run's
        primary key."""
        return self._one(StepRow, STEPS + " WHERE cache_key = %s AND status = 'succeeded'"  # noqa: S608 - constants
                         " AND EXISTS (SELECT 1 FROM runs WHERE runs.run_id = steps.run_id"
                         " AND runs.tenant = %s) ORDER BY rid LIMIT 1", (cache_key, tenant))

    def prompt_text(self, text_hash: str) -> str | None:
        """The text kept under ``text_hash``, or None."""
        row = self._first("SELECT text FROM prompt_texts WHERE hash = %s", (text_hash,))
        return None if row is None else bytes(row[0]).decode()

    def record_engine_build(self, fingerprint: str, settings_json: str) -> None:
        """Remember the settings behind a build fingerprint (first writer wins)."""
        self._exec(_BUILD, (fingerprint, settings_json))

    def engine_build(self, fingerprint: str) -> str | None:
        """The settings JSON recorded for a build fingerprint, or None."""
        row = self._first("SELECT settings FROM engine_builds WHERE fingerprint = %s",
                          (fingerprint,))
        return None if row is None else str(row[0])

    # -- imported recordings -----------------------------------------------------------

    def import_run(self, *, flow: FlowRow | None, run: RunRow, steps: Sequence[StepRow],
                   events: Sequence[EventRow], facts: Sequence[FactRow],
                   checkpoints: Sequence[CheckpointRow],
                   engine_builds: Sequence[tuple[str, str]],
                   prompt_texts: Sequence[tuple[str, str]] = ()) -> None:
        """Store an imported Run and everything it holds in one transaction [REC-7011],
        with the rendered prompt texts its Steps name (``(hash, text)``; a hash already
        kept is left as it is, REC-7111).

        Raises:
            psycopg.IntegrityError: a row collides (nothing is stored).
        """
        with self._tx() as conn:
            if flow is not None:
                conn.execute(INSERT_FLOW, msgspec.structs.astuple(flow))
            self._insert_run(conn, run)
            for row in steps:
                if not self._insert_step(conn, row):
                    raise psycopg.IntegrityError(f"step {row.client_token!r} twice")
            cur = conn.cursor()
            for at in range(0, len(events), _GROUP):  # rows like the live group commits'
                cur.executemany(INSERT_EVENT, pack(events[at:at + _GROUP]))
            cur.executemany(INSERT_FACT, [msgspec.structs.astuple(f) for f in facts])
            cur.executemany(INSERT_CHECKPOINT, [msgspec.structs.astuple(c) for c in checkpoints])
            cur.executemany(_BUILD, engine_builds)
            cur.executemany("INSERT INTO prompt_texts (hash, text) VALUES (%s, %s)"
                            " ON CONFLICT DO NOTHING",
                            [(h, text.encode()) for h, text in prompt_texts])
