"""The tenant-wide list of Runs of the embedded store, a page at a time (REC-7051).

Each page is one range read of an index of schema v13 (``runs_tenant_*``, or
``run_tenant_labels`` for a label filter), in creation order, starting after a position
the caller got from :meth:`TenantRunQueries.tenant_run_position`: it reads the page's
rows and no others, however many Runs the tenant has. :class:`SqliteStore` mixes this
class in (through :class:`~orchestrator_core.store_lists.ListQueries`).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from orchestrator_core.rows import RunRow

__all__ = ["TenantRunQueries"]


class TenantRunQueries:
    """The ``Store`` methods of ``GET /v1/runs`` over the store's connection."""

    _conn: sqlite3.Connection
    _runs: str

    def tenant_run_position(self, tenant: str, run_id: str) -> int | None:
        """Where the tenant's Run sits in creation order (an opaque, increasing number),
        or None when the tenant has no Run with this run_id (REC-7051)."""
        row = self._conn.execute("SELECT rowid FROM runs WHERE run_id = ? AND tenant = ?",
                                 (run_id, tenant)).fetchone()
        return None if row is None else int(row[0])

    def list_tenant_runs(self, tenant: str, *, mode: str | None = None,
                         status: str | None = None, label: tuple[str, str] | None = None,
                         after: int = 0, limit: int = 100) -> list[RunRow]:
        """A page of the tenant's Runs (of every Flow) matching every filter given,
        oldest first, after position ``after``; ``label`` is a ``(key, value)`` the
        Run's labels hold (REC-7051)."""
        where, args = ["r.tenant = ?"], [tenant]
        for column, value in (("mode", mode), ("status", status)):
            if value is not None:
                where.append(f"r.{column} = ?")
                args.append(value)
        # column names from rows.py and filters from the fixed pairs above: no input
        cols = self._runs.replace("SELECT ", "", 1).split(" FROM ", 1)[0]
        cols = ", ".join("r." + c.strip() for c in cols.split(","))
        query: list[Any]
        if label is None:
            index = "runs_tenant_" + ("_".join(c for c, v in (("mode", mode),
                                                              ("status", status))
                                               if v is not None) or "order")
            sql = (f"SELECT {cols} FROM runs AS r INDEXED BY {index}"  # noqa: S608
                   f" WHERE {' AND '.join(where)} AND r.rowid > ? ORDER BY r.rowid LIMIT ?")
            query = [*args, after, limit]
        else:
            sql = (f"SELECT {cols} FROM run_tenant_labels AS l"  # noqa: S608
                   " JOIN runs AS r ON r.rowid = l.run_rowid"
                   " WHERE l.tenant = ? AND l.key = ? AND l.value = ? AND l.run_rowid > ?"
                   f" AND {' AND '.join(where)} ORDER BY l.run_rowid LIMIT ?")
            query = [tenant, label[0], label[1], after, *args, limit]
        return [RunRow(*v) for v in self._conn.execute(sql, query)]
