"""The navigation lists: a tenant's Flows, a Flow's Runs, a Run's Steps (NERVE-4061).

Each list is a page in creation order (Steps: submission order, their ``ordinal``) of
``limit`` items (1..1000) after the item the ``after`` cursor names, like the checkpoint
list (NERVE-4008). Another tenant's Flow or Run answers exactly like an unknown one.
"""

from __future__ import annotations

from contracts.errors import InvalidParams
from contracts.flows import Flow
from contracts.runs import Run, RunMode, RunStatus
from contracts.steps import Step
from orchestrator_core import views
from orchestrator_core.lookup import get_flow, get_run
from orchestrator_core.store_base import Store

__all__ = ["MAX_LIMIT", "list_flows", "list_runs", "list_steps", "parse_label"]

MAX_LIMIT = 1000
"""The largest page a list answers."""


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidParams(f"limit must be 1..{MAX_LIMIT}",
                            data={"field": "limit", "limit": limit})


def _bad_after(what: str) -> InvalidParams:
    return InvalidParams(f"after must name {what}", data={"field": "after"})


def list_flows(store: Store, tenant: str, *, after: str | None = None,
               limit: int = 100) -> tuple[list[Flow], str | None]:
    """One page of the tenant's Flows, oldest first (NERVE-4061).

    Args:
        store: the store.
        tenant: the caller's tenant.
        after: a flow_id of this tenant; the page starts right after it.
        limit: page size, 1..1000.

    Returns:
        ``(page, next_after)``: ``next_after`` is the page's last flow_id when more
        follow, else None.

    Raises:
        InvalidParams: ``limit`` out of range, or ``after`` names no Flow of the tenant
            (``data.field`` names the parameter).
    """
    _check_limit(limit)
    position = 0
    if after is not None:
        found = store.flow_position(tenant, after)
        if found is None:
            raise _bad_after("a flow of this tenant")
        position = found
    rows = store.list_flows(tenant, position, limit + 1)
    page = [views.flow(r) for r in rows[:limit]]
    return page, page[-1].flow_id if len(rows) > limit else None


def parse_label(label: str | None) -> tuple[str, str] | None:
    """``key:value`` (split at the first colon) as ``(key, value)``, None for None.

    Raises:
        InvalidParams: no colon, an empty key, a key over 128 or a value over 1024
            characters (``data.field`` is ``label``).
    """
    if label is None:
        return None
    key, colon, value = label.partition(":")
    if not colon or not key or len(key) > 128 or len(value) > 1024:
        raise InvalidParams("label must be key:value (key 1..128, value 0..1024 chars)",
                            data={"field": "label"})
    return key, value


def list_runs(store: Store, flow_id: str, tenant: str, *, mode: str | None = None,
              status: str | None = None, label: str | None = None, after: str | None = None,
              limit: int = 100) -> tuple[list[Run], str | None]:
    """One page of a Flow's Runs matching every filter given, oldest first (NERVE-4061).

    Args:
        store: the store.
        flow_id: the Flow.
        tenant: the caller's tenant.
        mode: ``record``, ``replay`` or ``strict_replay``.
        status: ``active`` or ``cancelled``.
        label: ``key:value``, a label the Run carries.
        after: a run_id of this Flow; the page starts right after it.
        limit: page size, 1..1000.

    Returns:
        ``(page, next_after)``: ``next_after`` is the page's last run_id when more may
        follow, else None.

    Raises:
        NotFound: no such Flow (or another tenant's).
        InvalidParams: a filter is not one of its values, ``limit`` is out of range, or
            ``after`` names no Run of this Flow (``data.field`` names the parameter).
    """
    get_flow(store, flow_id, tenant)
    _check_limit(limit)
    for field, value, allowed in (("mode", mode, RunMode), ("status", status, RunStatus)):
        if value is not None and value not in {m.value for m in allowed}:
            raise InvalidParams(f"{field} must be one of {', '.join(m.value for m in allowed)}",
                                data={"field": field})
    pair = parse_label(label)
    position = 0
    if after is not None:
        found = store.run_position(flow_id, after)
        if found is None:
            raise _bad_after("a run of this flow")
        position = found
    rows = store.list_runs(flow_id, mode=mode, status=status, label=pair, after=position,
                           limit=limit + 1)
    page = [views.run(r, store.run_usage(r.run_id), store.child_runs(r.run_id))
            for r in rows[:limit]]
    return page, page[-1].run_id if len(rows) > limit else None


def list_steps(store: Store, run_id: str, tenant: str, *, after: str | None = None,
               limit: int = 100) -> tuple[list[Step], str | None]:
    """One page of a Run's Steps in submission order (their ``ordinal``, NERVE-4061).

    Args:
        store: the store.
        run_id: the Run.
        tenant: the caller's tenant.
        after: a step_id of this Run; the page starts right after it.
        limit: page size, 1..1000.

    Returns:
        ``(page, next_after)``: ``next_after`` is the page's last step_id when more
        follow, else None.

    Raises:
        NotFound: no such Run (or another tenant's).
        InvalidParams: ``limit`` out of range, or ``after`` names no Step of this Run
            (``data.field`` names the parameter).
    """
    get_run(store, run_id, tenant)
    _check_limit(limit)
    position = -1
    if after is not None:
        row = store.get_step(after)
        if row is None or row.run_id != run_id or row.ordinal < 0:
            raise _bad_after("a step of this run")
        position = row.ordinal
    rows = store.list_steps_page(run_id, position, limit + 1)
    page = [views.step(r) for r in rows[:limit]]
    return page, page[-1].step_id if len(rows) > limit else None
