"""Placement of a Step on a replica: ``auto``, ``pin`` and ``affinity`` (PLACE-5001).

``auto`` takes the least-loaded ready replica that serves the model, with a
deterministic tie-break: free slots descending, then replica_id ascending; replicas whose
circuit breaker is open are skipped (all open: ``CIRCUIT_OPEN``). ``pin``
honours its pool (and replica) or fails with a typed error; it never falls back.
``affinity`` keeps pools whose tags contain every requested pair, then acts as ``auto``.
"""

from __future__ import annotations

from contracts.errors import CircuitOpen, InvalidModel, PoolUnavailable, PoolUnready
from contracts.events import PlacementDecision
from contracts.pools import ReplicaHealth
from contracts.runs import Placement, PlacementAffinity, PlacementAuto, PlacementPin
from orchestrator_core.pools import Pool, PoolManager, Replica

__all__ = ["place"]


def _circuit_open(replicas: list[Replica]) -> CircuitOpen:
    """CIRCUIT_OPEN with the time until the first breaker may probe again."""
    return CircuitOpen("every candidate replica's circuit breaker is open",
                       retry_after_ms=min(r.breaker.retry_after_ms() for r in replicas),
                       data={"replicas": [r.replica_id for r in replicas]})


def _least_loaded(candidates: list[Replica]) -> Replica:
    return sorted(candidates, key=lambda r: (-r.free_slots, r.replica_id))[0]


def place(pools: PoolManager, model: str, placement: Placement | None) -> \
        tuple[Pool, Replica, PlacementDecision]:
    """Choose a replica for one Step.

    Args:
        pools: the pool manager.
        model: opaque model id from the Step input.
        placement: the Step's (or Run's) placement; ``None`` means ``auto``.

    Returns:
        ``(pool, replica, decision)``.

    Raises:
        InvalidModel: no pool serves ``model``.
        PoolUnavailable: the pinned pool/replica does not exist or cannot serve the model,
            or no pool matches the affinity tags.
        PoolUnready: the chosen pools have no ready replica.
    """
    serving = [p for p in pools.pools.values() if model in p.models]
    if not serving:
        raise InvalidModel(f"model {model!r} is not served here; see GET /v1/capabilities",
                           data={"field": "input.model", "model": model})
    match placement:
        case None | PlacementAuto():
            strategy, chosen = "auto", serving
        case PlacementAffinity(tags=tags):
            strategy = "affinity"
            chosen = [p for p in serving
                      if all(p.config.tags.get(k) == v for k, v in tags.items())]
            if not chosen:
                raise PoolUnavailable("no pool serving the model matches the affinity tags",
                                      data={"tags": tags, "model": model})
        case PlacementPin(pool_id=pool_id, replica_id=replica_id):
            pool = pools.pools.get(pool_id)
            if pool is None or pool not in serving:
                raise PoolUnavailable(f"pinned pool {pool_id!r} does not serve {model!r}",
                                      data={"pool_id": pool_id, "model": model})
            if replica_id is not None:
                rep = next((r for r in pool.replicas if r.replica_id == replica_id), None)
                if rep is None:
                    raise PoolUnavailable(f"pinned replica {replica_id!r} does not exist",
                                          data={"replica_id": replica_id})
                if rep.health is not ReplicaHealth.READY:
                    raise PoolUnready(f"pinned replica {replica_id} is {rep.health.value}",
                                      data={"replica_id": replica_id})
                if not rep.breaker.peek():
                    raise _circuit_open([rep])
                return pool, rep, PlacementDecision("pin", pool.pool_id, rep.replica_id,
                                                    "pinned replica")
            strategy, chosen = "pin", [pool]
    healthy = [r for p in chosen for r in p.replicas if r.health is ReplicaHealth.READY]
    if not healthy:
        raise PoolUnready("no ready replica serves the model yet",
                          data={"pools": [p.pool_id for p in chosen]})
    ready = [r for r in healthy if r.breaker.peek()]
    if not ready:
        raise _circuit_open(healthy)
    rep = _least_loaded(ready)
    pool = pools.pools[rep.pool_id]
    reason = f"least loaded of {len(ready)} ready replica(s); free_slots={rep.free_slots}"
    return pool, rep, PlacementDecision(strategy, pool.pool_id, rep.replica_id, reason)
