"""The tenant-wide list of Runs, every Flow's at once (REC-7051).

A page in creation order of ``limit`` Runs (1..1000) after the Run the ``after`` cursor
names, filtered like a Flow's list (NERVE-4061) by ``mode``, ``status`` and ``label``.
Only the caller's tenant's Runs are ever read: another tenant's run_id as ``after``
answers exactly like an unknown one.
"""

from __future__ import annotations

from contracts.errors import InvalidParams
from contracts.runs import Run, RunMode, RunStatus
from orchestrator_core import views
from orchestrator_core.navigation import MAX_LIMIT, parse_label
from orchestrator_core.store_base import Store

__all__ = ["list_tenant_runs"]


def list_tenant_runs(store: Store, tenant: str, *, mode: str | None = None,
                     status: str | None = None, label: str | None = None,
                     after: str | None = None,
                     limit: int = 100) -> tuple[list[Run], str | None]:
    """One page of the tenant's Runs, of every Flow, matching every filter given, oldest
    first (REC-7051).

    Args:
        store: the store.
        tenant: the caller's tenant.
        mode: ``record``, ``replay`` or ``strict_replay``.
        status: ``active`` or ``cancelled``.
        label: ``key:value``, a label the Run carries.
        after: a run_id of this tenant; the page starts right after it.
        limit: page size, 1..1000.

    Returns:
        ``(page, next_after)``: ``next_after`` is the page's last run_id when more may
        follow, else None.

    Raises:
        InvalidParams: a filter is not one of its values, ``limit`` is out of range, or
            ``after`` names no Run of the tenant (``data.field`` names the parameter).
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParams(f"limit must be 1..{MAX_LIMIT}",
                            data={"field": "limit", "limit": limit})
    for field, value, allowed in (("mode", mode, RunMode), ("status", status, RunStatus)):
        if value is not None and value not in {m.value for m in allowed}:
            raise InvalidParams(f"{field} must be one of {', '.join(m.value for m in allowed)}",
                                data={"field": field})
    pair = parse_label(label)
    position = 0
    if after is not None:
        found = store.tenant_run_position(tenant, after)
        if found is None:
            raise InvalidParams("after must name a run of this tenant", data={"field": "after"})
        position = found
    rows = store.list_tenant_runs(tenant, mode=mode, status=status, label=pair,
                                  after=position, limit=limit + 1)
    page = [views.run(r, store.run_usage(r.run_id), store.child_runs(r.run_id))
            for r in rows[:limit]]
    return page, page[-1].run_id if len(rows) > limit else None
