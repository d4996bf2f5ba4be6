"""The PostgreSQL store's navigation lists and run lifecycle queries (NERVE-4061,
REC-7051, NERVE-4100, NERVE-4103, NERVE-4104; PG-9010).

Positions are the ``rid`` identity column of each creation-ordered table (increasing with
creation order, as SQLite's rowid); each page is one range read of an index of schema
v3 (or of a table's ``(key, rid)`` index). The run log's rows are written by the v4
triggers; its end is one key read of ``run_log_heads``. :class:`PgStore` mixes this in.
"""

from __future__ import annotations

from typing import Any

from orchestrator_core.rows import FactRow, FlowRow, RunRow, StepRow
from orchestrator_core.store_pg_base import FACTS, FLOWS, RUN_COLS_R, STEPS, PgBase
from orchestrator_core.store_runs import RunLogEntry, SummaryRow

__all__ = ["PgLists"]


class PgLists(PgBase):
    """The ``Store`` list and run lifecycle methods over the pool."""

    def _position(self, table: str, key: str, owner: str, args: tuple[str, str]) -> int | None:
        row = self._first(f"SELECT rid FROM {table} WHERE {key} = %s"  # noqa: S608 - names
                          f" AND {owner} = %s", args)                  # from this module
        return None if row is None else int(row[0])

    def flow_position(self, tenant: str, flow_id: str) -> int | None:
        """Where the tenant's Flow sits in creation order (an opaque, increasing
        number), or None when the tenant has no Flow with this flow_id."""
        return self._position("flows", "flow_id", "tenant", (flow_id, tenant))

    def list_flows(self, tenant: str, after: int = 0, limit: int = 100) -> list[FlowRow]:
        """A page of the tenant's Flows, oldest first, after position ``after``."""
        return self._all(FlowRow, FLOWS + " WHERE tenant = %s AND rid > %s ORDER BY rid"
                         " LIMIT %s", (tenant, after, limit))

    def run_position(self, flow_id: str, run_id: str) -> int | None:
        """Where a Run of this Flow sits in creation order, or None when the Flow has no
        Run with this run_id."""
        return self._position("runs", "run_id", "flow_id", (run_id, flow_id))

    def _runs(self, owner: str, value: str, labels: str, mode: str | None,
              status: str | None, label: tuple[str, str] | None, after: int,
              limit: int) -> list[RunRow]:
        """A page of Runs with ``owner = value`` (``flow_id`` or ``tenant``), by the
        label table ``labels`` when ``label`` is given."""
        where, args = [f"r.{owner} = %s"], [value]
        for column, given in (("mode", mode), ("status", status)):
            if given is not None:
                where.append(f"r.{column} = %s")
                args.append(given)
        query: list[Any]
        if label is None:
            sql = (f"SELECT {RUN_COLS_R} FROM runs AS r"  # noqa: S608 - names from rows.py
                   f" WHERE {' AND '.join(where)} AND r.rid > %s ORDER BY r.rid LIMIT %s")
            query = [*args, after, limit]
        else:
            sql = (f"SELECT {RUN_COLS_R} FROM {labels} AS l"  # noqa: S608 - fixed names
                   " JOIN runs AS r ON r.rid = l.run_rowid"
                   f" WHERE l.{owner} = %s AND l.key = %s AND l.value = %s AND l.run_rowid > %s"
                   f" AND {' AND '.join(where)} ORDER BY l.run_rowid LIMIT %s")
            query = [value, label[0].encode(), label[1].encode(), after, *args, limit]
        return self._all(RunRow, sql, query)

    def list_runs(self, flow_id: str, *, mode: str | None = None, status: str | None = None,
                  label: tuple[str, str] | None = None, after: int = 0,
                  limit: int = 100) -> list[RunRow]:
        """A page of the Flow's Runs matching every filter given, oldest first, after
        position ``after``; ``label`` is a ``(key, value)`` the Run's labels hold."""
        return self._runs("flow_id", flow_id, "run_labels", mode, status, label, after, limit)

    def tenant_run_position(self, tenant: str, run_id: str) -> int | None:
        """Where the tenant's Run sits in creation order, or None when the tenant has no
        Run with this run_id (REC-7051)."""
        return self._position("runs", "run_id", "tenant", (run_id, tenant))

    def list_tenant_runs(self, tenant: str, *, mode: str | None = None,
                         status: str | None = None, label: tuple[str, str] | None = None,
                         after: int = 0, limit: int = 100) -> list[RunRow]:
        """A page of the tenant's Runs (of every Flow) matching every filter given, oldest
        first, after position ``after`` (REC-7051)."""
        return self._runs("tenant", tenant, "run_tenant_labels", mode, status, label, after,
                          limit)

    def list_steps_page(self, run_id: str, after: int = -1, limit: int = 100) -> list[StepRow]:
        """A page of the Run's Steps in submission order: ordinals above ``after``."""
        return self._all(StepRow, STEPS + " WHERE run_id = %s AND ordinal > %s"
                         " ORDER BY ordinal LIMIT %s", (run_id, after, limit))

    def fact_position(self, flow_id: str, fact_id: str) -> int | None:
        """Where a Fact of this Flow sits in append order, or None when the Flow has no
        Fact with this fact_id (NERVE-4075)."""
        return self._position("facts", "fact_id", "flow_id", (fact_id, flow_id))

    def list_flow_facts(self, flow_id: str, *, fact_type: str | None = None, after: int = 0,
                        limit: int = 1000) -> list[FactRow]:
        """A page of the Flow's Facts (of ``fact_type`` when given) in append order, after
        position ``after`` (NERVE-4075)."""
        where, args = "flow_id = %s", [flow_id]
        if fact_type is not None:
            where, args = "flow_id = %s AND type = %s", [flow_id, fact_type]
        return self._all(FactRow, f"{FACTS} WHERE {where} AND rid > %s ORDER BY rid LIMIT %s",
                         (*args, after, limit))

    # -- run lifecycle -----------------------------------------------------------------

    def run_log_page(self, run_id: str, after: int, limit: int) -> list[RunLogEntry]:
        """The run log entries holding positions above ``after``, in position order: from
        the one holding ``after + 1``, at most ``limit`` of them (NERVE-4100)."""
        return [(int(p), str(s), int(q), int(n), str(t)) for p, s, q, n, t in self._rows(
            "SELECT r.pos, r.step_id, r.seq, r.n, s.type FROM run_log r"
            " JOIN steps s ON s.step_id = r.step_id WHERE r.run_id = %(run)s AND r.pos >="
            " COALESCE((SELECT MAX(pos) FROM run_log WHERE run_id = %(run)s"
            " AND pos <= %(after)s), 0) ORDER BY r.pos LIMIT %(limit)s",
            {"run": run_id, "after": after, "limit": limit})]

    def run_log_end(self, run_id: str) -> int:
        """One past the Run's last frame position (0 when its log is empty): one key read
        of the counter the v4 triggers keep."""
        row = self._first("SELECT next_pos FROM run_log_heads WHERE run_id = %s", (run_id,))
        return 0 if row is None else int(row[0])

    def close_run(self, run_id: str, status: str, closed_at: str) -> bool:
        """Close an ``active`` Run with ``status`` (NERVE-4103); False (and no change)
        when it was not active. The close notifies every process's listener at COMMIT
        (payload ``" <run_id>"``: no Step), so their run streams see it now (PG-9113)."""
        with self._tx() as conn:
            if conn.execute("UPDATE runs SET status = %s, closed_at = %s WHERE run_id = %s"
                            " AND status = 'active'", (status, closed_at, run_id)).rowcount != 1:
                return False
            conn.execute("SELECT pg_notify(%s, %s)", (self.channel, " " + run_id))
            return True

    def live_steps(self, run_id: str) -> list[str]:
        """The step_ids of the Run's ``queued`` or ``running`` Steps in submission order
        (index ``steps_run_unfinished``)."""
        return [str(r[0]) for r in self._rows(
            "SELECT step_id FROM steps WHERE run_id = %s AND status IN ('queued', 'running')"
            " ORDER BY ordinal", (run_id,))]

    def set_run_summary(self, run_id: str, summary_json: str) -> None:
        """Keep a closed Run's summary (first writer wins, NERVE-4104)."""
        self._exec("UPDATE runs SET summary = %s WHERE run_id = %s AND summary IS NULL",
                   (summary_json, run_id))

    def summary_rows(self, run_id: str) -> list[SummaryRow]:
        """Every Step of the Run in submission order, as its summary reads them; the
        model is the input's ``model`` when it is a JSON string (NERVE-4104)."""
        return [(str(c), str(t), str(h), str(st), p, m, str(i), int(q))
                for c, t, h, st, p, m, i, q in self._rows(
                    "SELECT client_token, type, input_hash, status, provenance,"
                    " CASE WHEN json_typeof(input::json -> 'model') = 'string'"
                    " THEN input::json ->> 'model' END, step_id, last_seq FROM steps"
                    " WHERE run_id = %s ORDER BY ordinal", (run_id,))]
