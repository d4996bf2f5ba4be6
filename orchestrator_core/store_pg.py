"""The PostgreSQL store: the second backend of :class:`~orchestrator_core.store_base.Store`
(DESIGN.md §7; PG-9000).

It keeps the SQLite store's guarantees with PostgreSQL's own means:

* the schema is versioned (:mod:`orchestrator_core.pg_migrations`), brought up to date
  when the store opens;
* the idempotency key is the constraint ``UNIQUE(run_id, client_token, attempt)``: a Step
  is inserted ``ON CONFLICT DO NOTHING`` and a caller that lost rereads the winner, so
  two processes inserting one token at once make one Step (PG-9003);
* a Step's ordinal and a Fact's seq are the next of their Run, read after taking the Run's
  row lock in the inserting transaction, so concurrent writers of one Run never collide
  nor leave a gap (PG-9004);
* :meth:`PgStore.commit_events` writes a group commit's frames (packed rows,
  :mod:`orchestrator_core.frame_rows`) and its Step changes in one transaction (PG-9005);
* usage counters and run log positions are kept by triggers in the transaction of the
  rows they derive from (PG-9006, PG-9007).

Every method is synchronous and durable (committed) on return, like SQLite's; a call takes
a connection from a psycopg pool whose connections set ``search_path`` to the store's
schema. Integrity errors are ``psycopg.IntegrityError`` (``UniqueViolation``,
``ForeignKeyViolation``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from orchestrator_core.frame_rows import expand, miscounted, pack
from orchestrator_core.pg_migrations import PG_SCHEMA_VERSION, migrate
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
from orchestrator_core.store_pg_base import (
    CHECKPOINTS,
    FACTS,
    FLOWS,
    INSERT_CHECKPOINT,
    INSERT_EVENT,
    INSERT_FACT,
    INSERT_FLOW,
    LOCK_RUN,
    RUNS,
    STEPS,
)
from orchestrator_core.store_pg_jobs import PgJobs
from orchestrator_core.store_pg_lists import PgLists
from orchestrator_core.store_pg_multi import PgCluster

__all__ = ["PgStore"]

_FLOWS_F = ", ".join("f." + c for c in FlowRow.__struct_fields__)
_FRAMES_OF = "COALESCE((SELECT frames_of FROM steps WHERE step_id = %(id)s), %(id)s)"
"""The Step whose rows hold ``%(id)s``'s frames (NERVE-4025)."""
_READ = (f"SELECT seq, type, data, last_seq FROM events WHERE step_id = {_FRAMES_OF}"  # noqa: S608 - constants
         f" AND seq >= COALESCE((SELECT MAX(seq) FROM events WHERE step_id = {_FRAMES_OF}"
         " AND seq <= %(after)s), -1) ORDER BY seq LIMIT %(limit)s + 1")
_MAX_SEQ = (f"SELECT COALESCE(last_seq, seq) FROM events WHERE step_id = {_FRAMES_OF}"  # noqa: S608 - constants
            " ORDER BY seq DESC LIMIT 1")


class PgStore(PgLists, PgJobs, PgCluster):
    """The PostgreSQL store [PG-9000].

    Args:
        dsn: a libpq connection string or URI of the database.
        schema: the schema holding the store's tables, created when missing (lowercase
            letters, digits and ``_``; tests use a fresh one each).
        migrate_to: the schema version to migrate to (default
            :data:`~orchestrator_core.pg_migrations.PG_SCHEMA_VERSION`); a store opened
            below it serves only the methods whose tables exist (for migration tests).
        pool_size: the most connections the store holds open.

    Raises:
        ValueError: ``schema`` is not such a name, or ``migrate_to`` is not a version.
        psycopg.Error: the database refused a connection or a migration.
        psycopg_pool.PoolTimeout: no connection within 30 s.
    """

    def __init__(self, dsn: str, *, schema: str = "public", migrate_to: int | None = None,
                 pool_size: int = 8) -> None:
        super().__init__(dsn, schema=schema, pool_size=pool_size)
        try:
            with self._conn() as conn:
                migrate(conn, schema, PG_SCHEMA_VERSION if migrate_to is None else migrate_to)
        except BaseException:
            self._pool.close()
            raise

    # -- flows -------------------------------------------------------------------------

    def insert_flow(self, row: FlowRow) -> bool:
        """Insert a Flow unless its id or its tenant's hash exists; True when created."""
        return self._exec(INSERT_FLOW, msgspec.structs.astuple(row)) == 1

    def get_flow(self, flow_id: str) -> FlowRow | None:
        """The Flow by its flow_id or an alias of it (of any tenant), or None."""
        return (self._one(FlowRow, FLOWS + " WHERE flow_id = %s", (flow_id,))
                or self._one(FlowRow, f"SELECT {_FLOWS_F} FROM flow_aliases a JOIN flows f"  # noqa: S608
                             " ON f.flow_id = a.flow_id WHERE a.alias = %s LIMIT 1",
                             (flow_id,)))

    def get_flow_by_hash(self, tenant: str, flow_hash: str) -> FlowRow | None:
        """The tenant's Flow with this content hash (or an alias hash), or None."""
        return (self._one(FlowRow, FLOWS + " WHERE tenant = %s AND hash = %s",
                          (tenant, flow_hash))
                or self._one(FlowRow, f"SELECT {_FLOWS_F} FROM flow_aliases a JOIN flows f"  # noqa: S608
                             " ON f.flow_id = a.flow_id WHERE a.alias = %s AND a.tenant = %s"
                             " LIMIT 1", (flow_hash, tenant)))

    # -- runs --------------------------------------------------------------------------

    def insert_run(self, row: RunRow) -> None:
        """Insert a Run and its label rows in one transaction.

        Raises:
            psycopg.IntegrityError: the run_id exists or the flow_id does not.
        """
        with self._tx() as conn:
            self._insert_run(conn, row)

    def get_run(self, run_id: str) -> RunRow | None:
        """The Run row, or None."""
        return self._one(RunRow, RUNS + " WHERE run_id = %s", (run_id,))

    def set_run_status(self, run_id: str, status: str) -> None:
        """Change a Run's status."""
        self._exec("UPDATE runs SET status = %s WHERE run_id = %s", (status, run_id))

    def run_usage(self, run_id: str) -> RunUsage:
        """The Run's usage and Step counts by status, read from the counters the v2
        triggers keep (NERVE-4042), in one round trip."""
        rows = self._rows(
            "SELECT 'u', tokens_in, tokens_out, cost_usd, wall_ms FROM run_usage"
            " WHERE run_id = %(r)s UNION ALL SELECT status, n, 0, 0.0, 0 FROM run_step_counts"
            " WHERE run_id = %(r)s AND n > 0", {"r": run_id})
        usage = [r for r in rows if r[0] == "u"]
        tokens_in, tokens_out, cost, wall = usage[0][1:] if usage else (0, 0, 0.0, 0)
        counts = {str(r[0]): int(r[1]) for r in rows if r[0] != "u"}
        return RunUsage(int(tokens_in), int(tokens_out), float(cost), int(wall),
                        dict(sorted(counts.items())))

    def recount_usage(self, run_id: str) -> RunUsage:
        """:meth:`run_usage` summed over the Run's Steps (what the counters must equal)."""
        row = self._first(
            "SELECT COALESCE(SUM(tokens_in),0), COALESCE(SUM(tokens_out),0),"
            " COALESCE(SUM(cost_usd),0.0), COALESCE(SUM(wall_ms),0) FROM steps"
            " WHERE run_id = %s", (run_id,))
        tokens_in, tokens_out, cost, wall = row or (0, 0, 0.0, 0)
        counts = dict(self._rows("SELECT status, COUNT(*) FROM steps WHERE run_id = %s"
                                 " GROUP BY status ORDER BY status", (run_id,)))
        return RunUsage(int(tokens_in), int(tokens_out), float(cost), int(wall),
                        {str(k): int(v) for k, v in counts.items()})

    def child_runs(self, run_id: str) -> list[str]:
        """Runs forked from this Run's checkpoints, oldest first (index ``runs_parent``)."""
        return [str(r[0]) for r in self._rows(
            "SELECT run_id FROM runs WHERE parent_run_id = %s ORDER BY rid", (run_id,))]

    def set_lineage(self, run_id: str, parent_run_id: str, checkpoint_id: str) -> None:
        """Record where a forked Run came from."""
        self._exec("UPDATE runs SET parent_run_id = %s, from_checkpoint = %s WHERE run_id = %s",
                   (parent_run_id, checkpoint_id, run_id))

    # -- steps -------------------------------------------------------------------------

    def insert_step(self, row: StepRow) -> bool:
        """Insert a Step, claiming its ``(run_id, client_token, attempt)`` key, with the
        next ordinal of its Run (``row.ordinal`` is ignored) [PG-9003, PG-9004].

        Returns:
            False when the key is already taken (the caller rereads the existing Step).

        Raises:
            psycopg.IntegrityError: the Run does not exist.
        """
        with self._tx() as conn:
            return self._insert_step(conn, row)

    def steps_high_water(self, run_id: str) -> int:
        """The highest ``ordinal`` of the Run's Steps, -1 when it has none (index lookup)."""
        row = self._first("SELECT COALESCE(MAX(ordinal), -1) FROM steps WHERE run_id = %s",
                          (run_id,))
        return -1 if row is None else int(row[0])

    def unfinished_ordinals(self, run_id: str) -> list[int]:
        """Ordinals of the Run's ``queued`` or ``running`` Steps, ascending (partial index
        ``steps_run_unfinished``)."""
        return [int(r[0]) for r in self._rows(
            "SELECT ordinal FROM steps WHERE run_id = %s AND status IN ('queued', 'running')"
            " ORDER BY ordinal", (run_id,))]

    def last_step(self, run_id: str, step_type: str, status: str) -> StepRow | None:
        """The Run's latest Step of this type and status (index ``steps_run_type``)."""
        return self._one(StepRow, STEPS + " WHERE run_id = %s AND type = %s AND status = %s"
                         " ORDER BY ordinal DESC LIMIT 1", (run_id, step_type, status))

    def get_step(self, step_id: str) -> StepRow | None:
        """The Step row, or None."""
        return self._one(StepRow, STEPS + " WHERE step_id = %s", (step_id,))

    def get_step_by_token(self, run_id: str, client_token: str) -> StepRow | None:
        """The latest attempt of a Run's client_token (NERVE-4105), or None."""
        return self._one(StepRow, STEPS + " WHERE run_id = %s AND client_token = %s"
                         " ORDER BY rid DESC LIMIT 1", (run_id, client_token))

    def list_steps(self, run_id: str) -> list[StepRow]:
        """The Run's Steps in creation order."""
        return self._all(StepRow, STEPS + " WHERE run_id = %s ORDER BY rid", (run_id,))

    def unfinished_steps(self) -> list[StepRow]:
        """Steps left ``queued`` or ``running`` (after a crash), oldest first."""
        return self._all(StepRow, STEPS + " WHERE status IN ('queued', 'running') ORDER BY rid")

    # -- facts -------------------------------------------------------------------------

    def append_fact(self, row: FactRow) -> int:
        """Append a Fact at the end of its Run's order, in one transaction holding the
        Run's row lock (``row.seq`` is ignored) [PG-9004].

        Returns:
            Its ``seq`` (0 for the Run's first Fact).

        Raises:
            psycopg.IntegrityError: the Run does not exist, or the fact_id does.
        """
        values = msgspec.structs.astuple(row)
        with self._tx() as conn:
            conn.execute(LOCK_RUN, (row.run_id,))
            got = conn.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM facts WHERE run_id = %s",
                               (row.run_id,)).fetchone()
            seq = 0 if got is None else int(got[0])
            conn.execute(INSERT_FACT, (*values[:3], seq, *values[4:]))
        return seq

    def facts_high_water(self, run_id: str) -> int:
        """The Run's last Fact ``seq``, -1 when it has none (index lookup)."""
        row = self._first("SELECT COALESCE(MAX(seq), -1) FROM facts WHERE run_id = %s",
                          (run_id,))
        return -1 if row is None else int(row[0])

    def list_facts(self, *, run_id: str | None = None, flow_id: str | None = None,
                   fact_type: str | None = None, step_id: str | None = None,
                   since_seq: int = -1, limit: int = 1000,
                   fact_ids: list[str] | None = None) -> list[FactRow]:
        """Facts matching every given filter, in (run, seq) order, at most ``limit``."""
        where: list[str] = ["seq > %s"]
        args: list[Any] = [since_seq]
        for column, value in (("run_id", run_id), ("flow_id", flow_id), ("type", fact_type),
                              ("emitted_by_step", step_id)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if fact_ids is not None:
            where.append("fact_id = ANY(%s)")  # an id holding U+0000 names no Fact
            args.append([i for i in fact_ids if "\x00" not in i])
        return self._all(FactRow, f"{FACTS} WHERE {' AND '.join(where)}"
                         " ORDER BY run_id, seq LIMIT %s", (*args, limit))

    # -- checkpoints -------------------------------------------------------------------

    def insert_checkpoint(self, row: CheckpointRow) -> bool:
        """Store a checkpoint unless its content address exists; True when created."""
        return self._exec(INSERT_CHECKPOINT, msgspec.structs.astuple(row)) == 1

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        """The checkpoint row, or None."""
        return self._one(CheckpointRow, CHECKPOINTS + " WHERE checkpoint_id = %s",
                         (checkpoint_id,))

    def checkpoint_position(self, run_id: str, checkpoint_id: str) -> int | None:
        """Where a checkpoint of this Run sits in creation order, or None."""
        row = self._first("SELECT rid FROM checkpoints WHERE checkpoint_id = %s AND run_id = %s",
                          (checkpoint_id, run_id))
        return None if row is None else int(row[0])

    def list_checkpoints(self, run_id: str, after: int = 0,
                         limit: int = 1000) -> list[CheckpointRow]:
        """A page of a Run's checkpoints, oldest first, after position ``after``."""
        return self._all(CheckpointRow, CHECKPOINTS + " WHERE run_id = %s AND rid > %s"
                         " ORDER BY rid LIMIT %s", (run_id, after, limit))

    # -- events ------------------------------------------------------------------------

    def commit_events(self, rows: Sequence[EventRow], updates: Sequence[StepUpdate]) -> None:
        """Append frames (packed, STREAM-2011) and apply Step changes in ONE transaction
        [PG-9005], which also notifies every process's listener of the Steps written
        (PG-9103). Its first statement locks the rows of the Steps written and checks
        that this process owns each one (PG-9108).

        Raises:
            StepFenced: another process owns one of the Steps now (it adopted them from
                this one); nothing is written.
            ValueError: an update names a column outside ``STEP_UPDATABLE`` (nothing is
                written).
            psycopg.IntegrityError: a frame's ``(step_id, seq)`` is already stored, or its
                Step does not exist (nothing is written).
        """
        cursors: list[tuple[int, str]] = []
        others: list[tuple[str, dict[str, Any]]] = []
        for step_id, changes in updates:
            if len(changes) == 1 and "last_seq" in changes:
                cursors.append((changes["last_seq"], step_id))
                continue
            bad = set(changes) - STEP_UPDATABLE
            if bad:
                raise ValueError(f"not updatable: {sorted(bad)}")
            others.append((step_id, changes))
        with self._tx() as conn:
            cur = conn.cursor()
            self.fence(cur, {r[0] for r in rows} | {u[0] for u in updates})
            if rows:
                cur.executemany(INSERT_EVENT, pack(rows))
                cur.execute(*self.notify_sql(list(dict.fromkeys((r[0], r[2]) for r in rows))))
            if cursors:
                cur.executemany("UPDATE steps SET last_seq = %s WHERE step_id = %s", cursors)
            for step_id, changes in others:
                sets = ", ".join(f"{k} = %({k})s" for k in changes)
                cur.execute(f"UPDATE steps SET {sets} WHERE step_id = %(_id)s",  # noqa: S608 - columns checked above
                            {**changes, "_id": step_id})

    def read_events(self, step_id: str, after_seq: int,
                    limit: int = 100_000) -> list[EventRead]:
        """Committed frames of a Step with ``seq > after_seq``, in order, ``data`` the
        stored bytes; a Step served by reference reads the Step it names (NERVE-4025)."""
        return expand(self._rows(_READ, {"id": step_id, "after": after_seq, "limit": limit}),
                      after_seq, limit)

    def max_seq(self, step_id: str) -> int:
        """Highest committed seq of a Step (of the Step it names), -1 when it has none."""
        row = self._first(_MAX_SEQ, {"id": step_id})
        return -1 if row is None else int(row[0])

    def insert_served(self, row: StepRow, holder: str) -> tuple[bool, str]:
        """Insert a Step served by reference and, in the same transaction, keep its
        ``frames_hash`` on ``holder`` unless it keeps one already (NERVE-4025).

        Returns:
            ``(created, kept)``, ``kept`` the hash ``holder`` keeps.
        """
        with self._tx() as conn:
            held = conn.execute(
                "UPDATE steps SET frames_hash = COALESCE(frames_hash, %s) WHERE step_id = %s"
                " AND frames_of IS NULL RETURNING frames_hash", (row.frames_hash, holder)
            ).fetchone()
            if held is None:  # no such holder, or itself a reference: read what it keeps
                held = conn.execute("SELECT frames_hash FROM steps WHERE step_id = %s",
                                    (holder,)).fetchone()
            kept = str(row.frames_hash if held is None or held[0] is None else held[0])
            return kept == row.frames_hash and self._insert_step(conn, row), kept

    def integrity(self) -> dict[str, int]:
        """The crash tests' counts, as ``SqliteStore.integrity`` defines them: seq gaps
        (and packed rows holding another count), stale ``last_seq``, Steps with more
        than one terminal frame, broken references, and Runs whose counters differ from
        a recomputation."""
        gaps = self._first(
            "SELECT COUNT(*) FROM (SELECT step_id, SUM(COALESCE(last_seq, seq) - seq + 1) n,"
            " MAX(COALESCE(last_seq, seq)) m FROM events GROUP BY step_id) g"
            " WHERE n != m + 1")
        packed = self._rows("SELECT last_seq - seq + 1, data FROM events"
                            " WHERE last_seq IS NOT NULL")
        stale = self._first(
            "SELECT COUNT(*) FROM steps s WHERE s.last_seq != COALESCE((SELECT"
            " MAX(COALESCE(e.last_seq, e.seq)) FROM events e"
            " WHERE e.step_id = COALESCE(s.frames_of, s.step_id)), -1)")
        multi = self._first(
            "SELECT COUNT(*) FROM (SELECT step_id FROM events WHERE type IN ('end', 'error')"
            " GROUP BY step_id HAVING COUNT(*) > 1) t")
        broken = self._first(
            "SELECT COUNT(*) FROM steps s LEFT JOIN steps o ON o.step_id = s.frames_of"
            " WHERE s.frames_of IS NOT NULL AND (o.step_id IS NULL"
            " OR o.status IN ('queued', 'running') OR o.frames_of IS NOT NULL"
            " OR s.frames_hash IS NULL OR o.frames_hash IS DISTINCT FROM s.frames_hash"
            " OR EXISTS (SELECT 1 FROM events e WHERE e.step_id = s.step_id))")
        bad = {str(r[0]) for r in self._rows("SELECT run_id FROM run_step_counts WHERE n < 0")}
        for (run_id,) in self._rows("SELECT run_id FROM runs UNION SELECT run_id FROM run_usage"):
            kept, summed = self.run_usage(run_id), self.recount_usage(run_id)
            same_cost = abs(kept.cost_usd - summed.cost_usd) <= 1e-9 * max(
                1.0, abs(summed.cost_usd))
            if not same_cost or msgspec.structs.replace(kept, cost_usd=0.0) != \
                    msgspec.structs.replace(summed, cost_usd=0.0):
                bad.add(str(run_id))
        return {"seq_gaps": int(gaps[0] if gaps else 0) + miscounted(packed),
                "stale_last_seq": int(stale[0] if stale else 0),
                "multi_terminal": int(multi[0] if multi else 0),
                "broken_references": int(broken[0] if broken else 0),
                "usage_mismatch": len(bad)}
