"""The navigation lists of the embedded store: Flows, Runs and Steps a page at a time
(NERVE-4061).

Each page is one range read of an index of schema v12 (or of ``steps_run_ordinal``),
in creation order, starting after a position the caller got from the matching
``*_position`` method: it reads the page's rows and no others, however many the
tenant, Flow or Run has. :class:`SqliteStore` mixes this class in.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from orchestrator_core.rows import FactRow, FlowRow, RunRow, StepRow
from orchestrator_core.store_run_lists import TenantRunQueries

__all__ = ["ListQueries"]


class ListQueries(TenantRunQueries):
    """The ``Store`` list methods over the store's connection and column lists (the
    tenant-wide Run list's from :class:`TenantRunQueries`)."""

    _conn: sqlite3.Connection
    _flows: str
    _runs: str
    _steps: str
    _facts: str

    def flow_position(self, tenant: str, flow_id: str) -> int | None:
        """Where the tenant's Flow sits in creation order (an opaque, increasing
        number), or None when the tenant has no Flow with this flow_id."""
        row = self._conn.execute("SELECT rowid FROM flows WHERE flow_id = ? AND tenant = ?",
                                 (flow_id, tenant)).fetchone()
        return None if row is None else int(row[0])

    def list_flows(self, tenant: str, after: int = 0, limit: int = 100) -> list[FlowRow]:
        """A page of the tenant's Flows, oldest first, after position ``after``."""
        return [FlowRow(*v) for v in self._conn.execute(
            self._flows + " INDEXED BY flows_tenant_order WHERE tenant = ? AND rowid > ?"
            " ORDER BY rowid LIMIT ?", (tenant, after, limit))]

    def run_position(self, flow_id: str, run_id: str) -> int | None:
        """Where a Run of this Flow sits in creation order, or None when the Flow has no
        Run with this run_id."""
        row = self._conn.execute("SELECT rowid FROM runs WHERE run_id = ? AND flow_id = ?",
                                 (run_id, flow_id)).fetchone()
        return None if row is None else int(row[0])

    def list_runs(self, flow_id: str, *, mode: str | None = None, status: str | None = None,
                  label: tuple[str, str] | None = None, after: int = 0,
                  limit: int = 100) -> list[RunRow]:
        """A page of the Flow's Runs matching every filter given, oldest first, after
        position ``after``; ``label`` is a ``(key, value)`` the Run's labels hold."""
        where, args = ["r.flow_id = ?"], [flow_id]
        for column, value in (("mode", mode), ("status", status)):
            if value is not None:
                where.append(f"r.{column} = ?")
                args.append(value)
        # column names from rows.py and filters from the fixed pairs above: no input
        cols = self._runs.replace("SELECT ", "", 1).split(" FROM ", 1)[0]
        cols = ", ".join("r." + c.strip() for c in cols.split(","))
        query: list[Any]
        if label is None:
            index = "runs_flow_" + ("_".join(c for c, v in (("mode", mode), ("status", status))
                                             if v is not None) or "order")
            sql = (f"SELECT {cols} FROM runs AS r INDEXED BY {index}"  # noqa: S608
                   f" WHERE {' AND '.join(where)} AND r.rowid > ? ORDER BY r.rowid LIMIT ?")
            query = [*args, after, limit]
        else:
            sql = (f"SELECT {cols} FROM run_labels AS l"  # noqa: S608
                   " JOIN runs AS r ON r.rowid = l.run_rowid"
                   " WHERE l.flow_id = ? AND l.key = ? AND l.value = ? AND l.run_rowid > ?"
                   f" AND {' AND '.join(where)} ORDER BY l.run_rowid LIMIT ?")
            query = [flow_id, label[0], label[1], after, *args, limit]
        return [RunRow(*v) for v in self._conn.execute(sql, query)]

    def list_steps_page(self, run_id: str, after: int = -1, limit: int = 100) -> list[StepRow]:
        """A page of the Run's Steps in submission order: ordinals above ``after``."""
        return [StepRow(*v) for v in self._conn.execute(
            self._steps + " WHERE run_id = ? AND ordinal > ? ORDER BY ordinal LIMIT ?",
            (run_id, after, limit))]

    def fact_position(self, flow_id: str, fact_id: str) -> int | None:
        """Where a Fact of this Flow sits in append order, or None when the Flow has no
        Fact with this fact_id (NERVE-4075)."""
        row = self._conn.execute("SELECT rowid FROM facts WHERE fact_id = ? AND flow_id = ?",
                                 (fact_id, flow_id)).fetchone()
        return None if row is None else int(row[0])

    def list_flow_facts(self, flow_id: str, *, fact_type: str | None = None, after: int = 0,
                        limit: int = 1000) -> list[FactRow]:
        """A page of the Flow's Facts (of ``fact_type`` when given) in append order, after
        position ``after`` (NERVE-4075)."""
        where, args = "flow_id = ?", [flow_id]
        if fact_type is not None:
            where, args = "flow_id = ? AND type = ?", [flow_id, fact_type]
        return [FactRow(*v) for v in self._conn.execute(
            f"{self._facts} WHERE {where} AND rowid > ? ORDER BY rowid LIMIT ?",
            (*args, after, limit))]
