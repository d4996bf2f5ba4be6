"""Run-time pool management: provision a remote replica, drain one (PLACE-5100..PLACE-5110).

Both routes are an operator's: the server must have ``provisioning.enabled`` and the
caller's tenant must be one of ``provisioning.operator_tenants``; anyone else gets 403
``POLICY_DENIED`` naming ``provisioning.enabled`` or ``authorization`` (PLACE-5101). The
domain rules are :mod:`orchestrator_core.provisioning`'s.
"""

from __future__ import annotations

from litestar import Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from contracts.errors import Internal
from contracts.pools import PoolInfo, ProvisionRequest, ReplicaInfo
from orchestrator_core.provision_policy import check_operator
from orchestrator_core.provisioning import provisioner_of
from orchestrator_core.service import Orchestrator

__all__ = ["POOL_ROUTES", "drain_replica", "provision_replica"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]


@post("/v1/pools/provision", status_code=201)
async def provision_replica(data: JSONBody[ProvisionRequest], orch: Orch,
                            tenant: Tenant) -> Response[PoolInfo]:
    """Validate a remote OpenAI-compatible engine server, then add it as a replica of an
    existing ``openai_http`` pool or of a new one (PLACE-5100, PLACE-5102): 201 with the
    pool's view and ``Location`` naming the pool. Refusals: 403 (not an operator, or a
    refused host, PLACE-5103), 400 (a malformed field, or a server that did not answer as
    its dialect does), 409 (its model or build fingerprint is not the pool's, PLACE-5104).
    """
    check_operator(orch.config.provisioning, tenant)
    info, replica_id = await provisioner_of(orch.pools, orch.store).provision(data)
    return Response(info, status_code=201,
                    headers={"Location": f"/v1/pools/{info.pool_id}",
                             "X-Replica-Id": replica_id})


@post("/v1/pools/{pool_id:str}/replicas/{replica:str}/drain", status_code=202)
async def drain_replica(pool_id: FromPath[str], replica: FromPath[str], orch: Orch,
                        tenant: Tenant) -> ReplicaInfo:
    """Drain replica ``<pool_id>/<replica>`` (e.g. ``r1``): 202 with its view, now
    ``draining``; it takes no new placement, its placed Steps finish, then it is removed
    and ``GET /v1/pools`` shows it ``removed`` (PLACE-5108, PLACE-5109). 404 for an
    unknown pool or replica."""
    check_operator(orch.config.provisioning, tenant)
    tg = orch.tasks.tg
    if tg is None:  # pragma: no cover - the task group lives as long as the server serves
        raise Internal("the server is not running its tasks")
    return provisioner_of(orch.pools, orch.store).drain(pool_id, replica, tg.start_soon)


POOL_ROUTES = [provision_replica, drain_replica]
"""The route handlers :func:`orchestratord.app.create_app` registers."""
