"""Tenant-scoped reads of Flows, Runs and Steps (NERVE-4051).

Each lookup answers another tenant's id exactly like an unknown one (``NotFound``);
``tenant=None`` is the server's own, unscoped view. The service, the Facts and Checkpoints
helpers and the step types all read through these, so none of them needs the service.
"""

from __future__ import annotations

from contracts.errors import NotFound
from contracts.flows import Flow
from contracts.runs import Run
from contracts.steps import Step
from orchestrator_core import views
from orchestrator_core.store_base import Store

__all__ = ["get_flow", "get_run", "get_step"]


def get_flow(store: Store, flow_id: str, tenant: str | None) -> Flow:
    """The tenant's Flow.

    Raises:
        NotFound: no such Flow, or another tenant's (``data.flow_id``).
    """
    row = store.get_flow(flow_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"no flow {flow_id}", data={"flow_id": flow_id})
    return views.flow(row)


def get_run(store: Store, run_id: str, tenant: str | None) -> Run:
    """The tenant's Run with its usage, Step counts and forked children.

    Raises:
        NotFound: no such Run, or another tenant's (``data.run_id``).
    """
    row = store.get_run(run_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"no run {run_id}", data={"run_id": run_id})
    return views.run(row, store.run_usage(run_id), store.child_runs(run_id))


def get_step(store: Store, step_id: str, tenant: str | None) -> Step:
    """The tenant's Step resource.

    Raises:
        NotFound: no such Step, or one of another tenant's Runs (``data.step_id``).
    """
    row = store.get_step(step_id)
    if row is not None and tenant is not None:
        run = store.get_run(row.run_id)
        if run is None or run.tenant != tenant:
            row = None
    if row is None:
        raise NotFound(f"no step {step_id}", data={"step_id": step_id})
    return views.step(row)
