"""The navigation routes: the lists of a tenant's Flows, a Flow's Runs, a Run's Steps
(NERVE-4061), and a Checkpoint or a Fact by id (NERVE-4074).

Each answers a JSON array, one page in creation order (Steps: submission order), with
``Link: <...>; rel="next"`` when another page follows, like the checkpoint list: ``limit``
(1..1000, default 100) and ``after`` (the last id of the previous page).
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from contracts.checkpoints import Checkpoint
from contracts.facts import Fact
from contracts.flows import Flow
from contracts.runs import Run
from contracts.steps import Step
from orchestrator_core import navigation
from orchestrator_core.service import Orchestrator

__all__ = ["NAV_ROUTES", "get_checkpoint", "get_fact", "list_flow_runs", "list_flows",
           "list_run_steps"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]


def _next_link(path: str, next_after: str | None, limit: int,
               filters: dict[str, str | None] | None = None) -> dict[str, str]:
    """The ``Link`` header naming the next page (with the same filters), or none."""
    if next_after is None:
        return {}
    query = {k: v for k, v in (filters or {}).items() if v is not None}
    query |= {"limit": str(limit), "after": next_after}
    return {"Link": f'<{path}?{urlencode(query)}>; rel="next"'}


@get("/v1/flows")
async def list_flows(orch: Orch, tenant: Tenant, limit: FromQuery[int] = 100,
                     after: FromQuery[str | None] = None) -> Response[list[Flow]]:
    """A page of the caller's Flows, oldest first: ``limit`` (1..1000, default 100)
    after the flow_id ``after``; ``Link: <...>; rel="next"`` names the next page."""
    page, next_after = navigation.list_flows(orch.store, tenant, after=after, limit=limit)
    return Response(page, headers=_next_link("/v1/flows", next_after, limit))


@get("/v1/flows/{flow_id:str}/runs")
async def list_flow_runs(flow_id: FromPath[str], orch: Orch, tenant: Tenant,
                         mode: FromQuery[str | None] = None,
                         status: FromQuery[str | None] = None,
                         label: FromQuery[str | None] = None,
                         limit: FromQuery[int] = 100,
                         after: FromQuery[str | None] = None) -> Response[list[Run]]:
    """A page of a Flow's Runs, oldest first, filtered by ``mode``, ``status`` and
    ``label`` (``key:value``): ``limit`` (1..1000, default 100) after the run_id
    ``after``; ``Link: <...>; rel="next"`` names the next page."""
    page, next_after = navigation.list_runs(orch.store, flow_id, tenant, mode=mode,
                                            status=status, label=label, after=after,
                                            limit=limit)
    return Response(page, headers=_next_link(
        f"/v1/flows/{quote(flow_id)}/runs", next_after, limit,
        {"mode": mode, "status": status, "label": label}))


@get("/v1/runs/{run_id:str}/steps")
async def list_run_steps(run_id: FromPath[str], orch: Orch, tenant: Tenant,
                         limit: FromQuery[int] = 100,
                         after: FromQuery[str | None] = None) -> Response[list[Step]]:
    """A page of a Run's Steps in submission order: ``limit`` (1..1000, default 100)
    after the step_id ``after``; ``Link: <...>; rel="next"`` names the next page."""
    page, next_after = navigation.list_steps(orch.store, run_id, tenant, after=after,
                                             limit=limit)
    return Response(page, headers=_next_link(f"/v1/runs/{quote(run_id)}/steps",
                                             next_after, limit))


@get("/v1/checkpoints/{checkpoint_id:str}")
async def get_checkpoint(checkpoint_id: FromPath[str], orch: Orch, tenant: Tenant) -> Checkpoint:
    """A Checkpoint of the caller's tenant; another tenant's is 404 like an unknown id."""
    return orch.checkpoints.get(checkpoint_id, tenant)


@get("/v1/facts/{fact_id:str}")
async def get_fact(fact_id: FromPath[str], orch: Orch, tenant: Tenant) -> Fact:
    """A Fact of the caller's tenant; another tenant's is 404 like an unknown id."""
    return orch.facts.get(fact_id, tenant)


NAV_ROUTES = [list_flows, list_flow_runs, list_run_steps, get_checkpoint, get_fact]
"""The route handlers the app registers."""
