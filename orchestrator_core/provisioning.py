"""Remote engine replicas provisioned and drained at run time (PLACE-5100..PLACE-5110).

:meth:`Provisioner.provision` registers one OpenAI-compatible engine server into an
existing ``openai_http`` pool or a new one. Nothing takes traffic before it is validated,
through the pool's own engine driver (the one a configured replica meets at start-up):
its URL passes the host rule (:func:`~orchestrator_core.provision_policy.check_engine_url`),
its server reports what it runs, the model it serves and the build fingerprint made
from that report equal the pool's, and it answers its health check. Only then does the
replica join its pool, ``ready``, with a replica id never used before in that pool.

:meth:`Provisioner.drain` marks a replica ``draining``: placement skips it, the Steps
placed on it before finish, then it is closed and kept in its pool's view as
``removed``. Provisioned replicas live in this process's memory only: a restart serves
the config's pools again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import msgspec

from contracts.errors import (
    Conflict,
    EngineError,
    InvalidParams,
    NotFound,
    PolicyDenied,
)
from contracts.pools import PoolInfo, ProvisionRequest, ReplicaHealth, ReplicaInfo
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.pools import Pool, PoolManager, Replica
from orchestrator_core.provision_policy import check_engine_url, check_pool_id
from orchestrator_core.store_base import Store
from worker_adapters.base import (
    EngineIdentity,
    ModelConfig,
    PoolConfig,
    ReplicaSpec,
    StartedReplica,
)

__all__ = ["DRAIN_POLL_S", "NEW_POOL_OPTIONS", "REMOTE_ENGINE", "Provisioner", "Spawn",
           "provisioner_of"]

REMOTE_ENGINE = "openai_http"
"""The only engine whose replicas may be provisioned at run time."""

NEW_POOL_OPTIONS = frozenset({"constraint", "batch_invariant", "engine_version"})
"""The ``options`` a new pool may take besides ``dialect`` (its own field)."""

DRAIN_POLL_S = 0.02
"""Seconds between two looks at a draining replica's slots."""

_POOL_FIELDS = ("model", "dialect", "options", "slots_per_replica", "queue_capacity", "tags")
"""Request fields that only a new pool takes."""

_HEX = frozenset("0123456789abcdef")

Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], object]
"""Starts a background task (the orchestrator's task group's ``start_soon``)."""


def _sha256(value: str) -> str:
    """A declared weights hash, ``sha256:`` optional.

    Raises:
        InvalidParams: not 64 hex digits (``model.sha256``).
    """
    digest = value.removeprefix("sha256:").lower()
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise InvalidParams("model.sha256 must be 64 hex digits",
                            data={"field": "model.sha256"})
    return digest


def _new_pool_config(req: ProvisionRequest, url: str) -> PoolConfig:
    """The config of a pool the request creates (PLACE-5102).

    Raises:
        InvalidParams: no ``model``, no ``dialect``, or an option a new pool does not
            take; ``data["field"]`` names it.
    """
    if req.model is None:
        raise InvalidParams("a new pool needs its model", data={"field": "model"})
    if req.dialect is None:
        raise InvalidParams("a new pool names its server's dialect",
                            data={"field": "dialect"})
    options: dict[str, Any] = dict(req.options or {})
    for key in sorted(options):
        if key not in NEW_POOL_OPTIONS:
            raise InvalidParams(f"option {key!r} is not one a provisioned pool takes: "
                                + ", ".join(sorted(NEW_POOL_OPTIONS)),
                                data={"field": f"options.{key}"})
    model = ModelConfig(id=req.model.id, family=req.model.family,
                        context_tokens=req.model.context_tokens,
                        sha256=_sha256(req.model.sha256) if req.model.sha256 else None)
    return PoolConfig(pool_id=req.pool_id, engine=REMOTE_ENGINE, models=[model],
                      tags=dict(req.tags or {}), replicas=1,
                      slots_per_replica=req.slots_per_replica or 1,
                      queue_capacity=req.queue_capacity or 64,
                      options={**options, "dialect": req.dialect}, urls=[url])


def _report(identity: EngineIdentity) -> dict[str, Any] | None:
    report = identity.settings.get("engine_report")
    return report if isinstance(report, dict) else None


def _same_identity(expected: EngineIdentity, observed: EngineIdentity) -> None:
    """Refuse a replica whose engine is not the pool's (PLACE-5104).

    Raises:
        Conflict: the served model differs (``data["field"]`` ``model``), or any other
            part of the build fingerprint (``build_fingerprint``, with the report keys
            that differ in ``data["differs"]``).
    """
    want, got = _report(expected) or {}, _report(observed) or {}
    if want.get("model") != got.get("model") or expected.model_hash != observed.model_hash:
        raise Conflict(f"the server serves {got.get('model')!r}, the pool's model is "
                       f"{want.get('model')!r}",
                       data={"field": "model", "expected": expected.model_hash,
                             "observed": observed.model_hash})
    if expected.build_fingerprint != observed.build_fingerprint:
        differs = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise Conflict("the server's build fingerprint differs from the pool's: "
                       + ", ".join(differs),
                       data={"field": "build_fingerprint",
                             "expected": expected.build_fingerprint,
                             "observed": observed.build_fingerprint, "differs": differs})


class Provisioner:
    """Adds and drains remote replicas of a :class:`~orchestrator_core.pools.PoolManager`.

    Args:
        manager: the orchestrator's pool manager (its drivers, clock and config).
        store: where a new pool's engine build is recorded (as at start-up).
    """

    def __init__(self, manager: PoolManager, store: Store) -> None:
        self.manager = manager
        self.store = store
        self.config = manager.config.provisioning
        self.live: set[str] = set()  # replica ids provisioned and not removed
        self._lock = anyio.Lock()

    async def provision(self, req: ProvisionRequest) -> tuple[PoolInfo, str]:
        """Validate one remote replica, then add it to its pool (PLACE-5100, PLACE-5102).

        Args:
            req: the request (the caller is an operator, checked by the route).

        Returns:
            ``(the pool's view, the new replica's id)``.

        Raises:
            InvalidParams: a malformed field, or a server that did not answer as its
                dialect does within ``validate_timeout_ms`` (``data["field"]`` ``url``).
            PolicyDenied: the URL's host is refused (PLACE-5103).
            Conflict: the pool is not a remote pool whose identity came from its server
                (``pool_id``), the model or fingerprint differs (PLACE-5104), or
                ``max_replicas`` replicas are live (``pool_id``).
        """
        check_pool_id(req.pool_id)
        url = check_engine_url(req.url, self.config.allowed_hosts)
        async with self._lock:
            if len(self.live) >= self.config.max_replicas:
                raise Conflict(f"{self.config.max_replicas} provisioned replicas are live "
                               "already (provisioning.max_replicas)",
                               data={"field": "pool_id", "limit": self.config.max_replicas})
            pool = self.manager.pools.get(req.pool_id)
            if pool is None:
                pc = _new_pool_config(req, url)
            else:
                self._check_existing(pool, req)
                pc = msgspec.structs.replace(pool.config, urls=[url], replicas=1)
            index = 0 if pool is None else pool.next_index
            identity, started = await self._validate(pc, pool, req, f"{req.pool_id}/r{index}")
            return self._join(pc, pool, identity, started)

    def _check_existing(self, pool: Pool, req: ProvisionRequest) -> None:
        for name in _POOL_FIELDS:
            if getattr(req, name) is not None:
                raise InvalidParams(f"{name} is fixed by pool {pool.pool_id}'s config",
                                    data={"field": name})
        if pool.config.engine != REMOTE_ENGINE or _report(pool.identity) is None:
            raise Conflict(f"pool {pool.pool_id} is not a remote pool whose identity its "
                           "server reported, so a new server cannot be checked against it",
                           data={"field": "pool_id"})

    async def _validate(self, pc: PoolConfig, pool: Pool | None, req: ProvisionRequest,
                        replica_id: str) -> tuple[EngineIdentity, StartedReplica]:
        """The candidate's identity and its started adapter (PLACE-5104, PLACE-5107)."""
        driver = self.manager._driver(pc)
        unhealthy = "the engine server did not answer as a {} server: {}"
        found: tuple[EngineIdentity, StartedReplica] | None = None
        try:
            with self.manager.clock.move_on_after(self.config.validate_timeout_ms / 1000.0):
                identity = await driver.identity(pc)
                report = _report(identity)
                if report is None:
                    raise EngineError("no identity report")
                if req.expect_model is not None and report.get("model") != req.expect_model:
                    raise Conflict(f"the server serves {report.get('model')!r}",
                                   data={"field": "expect_model", "expected": req.expect_model,
                                         "observed": report.get("model")})
                if pool is not None:
                    _same_identity(pool.identity, identity)
                spec = ReplicaSpec(replica_id=replica_id, index=0,
                                   slots=pc.slots_per_replica,
                                   data_dir=self.manager.data_dir)
                found = identity, await driver.start(
                    pc, identity if pool is None else pool.identity, spec)
        except EngineError as exc:
            raise InvalidParams(unhealthy.format(pc.options.get("dialect"), exc.message),
                                data={"field": "url"}) from exc
        except (OSError, ValueError, OverflowError) as exc:  # the socket refused the address
            raise InvalidParams(unhealthy.format(pc.options.get("dialect"), str(exc)),
                                data={"field": "url"}) from exc
        except InvalidParams as exc:
            if pool is None and (exc.data or {}).get("field") == "options.dialect":
                raise InvalidParams(exc.message, data={"field": "dialect"}) from exc
            raise
        if found is None:
            raise InvalidParams(unhealthy.format(
                pc.options.get("dialect"), f"no answer within "
                f"{self.config.validate_timeout_ms} ms"), data={"field": "url"})
        return found

    def _join(self, pc: PoolConfig, pool: Pool | None, identity: EngineIdentity,
              started: StartedReplica) -> tuple[PoolInfo, str]:
        """Add the validated replica to its pool, ready (PLACE-5105)."""
        mgr = self.manager
        reset_s = mgr.config.breaker_reset_ms / 1000.0
        if pool is None:
            pool = Pool(pc, identity, mgr.clock, breaker_failures=mgr.config.breaker_failures,
                        breaker_reset_s=reset_s)
            rep = pool.replicas[0]
            mgr.pools[pc.pool_id] = pool
            self.store.record_engine_build(identity.build_fingerprint,
                                           msgspec.json.encode(identity.settings,
                                                               order="sorted").decode())
        else:
            index = pool.next_index
            rep = Replica(pool.pool_id, index, pool.effective_slots(),
                          CircuitBreaker(f"{pool.pool_id}/r{index}", mgr.clock,
                                         failure_threshold=mgr.config.breaker_failures,
                                         reset_timeout_s=reset_s))
            pool.next_index = index + 1
            pool.replicas.append(rep)
        rep.adapter, rep.process = started.adapter, started.process
        if mgr.slot_gate is not None and pc.urls:  # its slots count across processes
            rep.gate = (mgr.slot_gate, pc.urls[0])  # PG-9107
        rep.health = ReplicaHealth.READY
        self.live.add(rep.replica_id)
        return pool.info(), rep.replica_id

    def drain(self, pool_id: str, replica: str, spawn: Spawn) -> ReplicaInfo:
        """Start draining ``<pool_id>/<replica>`` (PLACE-5108).

        It takes no new placement at once; a background task waits until no Step holds
        or waits for its slots, then closes it and keeps it as ``removed`` (PLACE-5109).
        Draining a draining or removed replica answers its state again.

        Args:
            pool_id: the pool.
            replica: the replica's name in the pool, e.g. ``r1``.
            spawn: starts the background task.

        Returns:
            The replica's view, ``draining`` (or ``removed``).

        Raises:
            NotFound: no such pool (``pool_id``) or replica (``replica``).
            PolicyDenied: the replica is still starting or stopped (``replica``).
        """
        pool = self.manager.pools.get(pool_id)
        if pool is None:
            raise NotFound(f"no pool {pool_id}", data={"field": "pool_id"})
        replica_id = f"{pool_id}/{replica}"
        for rep in (*pool.replicas, *pool.removed):
            if rep.replica_id == replica_id:
                break
        else:
            raise NotFound(f"no replica {replica_id}", data={"field": "replica"})
        if rep.health in (ReplicaHealth.DRAINING, ReplicaHealth.REMOVED):
            return rep.info()
        if rep.health not in (ReplicaHealth.READY, ReplicaHealth.UNHEALTHY):
            raise PolicyDenied(f"replica {replica_id} is {rep.health.value}",
                               data={"field": "replica"})
        rep.health = ReplicaHealth.DRAINING

        async def finish() -> None:
            await self._finish_drain(pool, rep)

        spawn(finish)
        return rep.info()

    async def _finish_drain(self, pool: Pool, rep: Replica) -> None:
        """Wait for two quiet looks in a row, then remove the replica (PLACE-5109)."""
        quiet = 0
        while quiet < 2:
            await self.manager.clock.sleep(DRAIN_POLL_S)
            quiet = quiet + 1 if rep.busy == 0 and rep.waiting == 0 else 0
        with anyio.CancelScope(shield=True):
            rep.health = ReplicaHealth.REMOVED
            pool.replicas.remove(rep)
            pool.removed.append(rep)
            del pool.removed[:max(0, len(pool.removed) - self.config.removed_kept)]
            self.live.discard(rep.replica_id)
            if rep.adapter is not None:
                await rep.adapter.aclose()
            if rep.process is not None:
                await rep.process.stop()


_PROVISIONERS: weakref.WeakKeyDictionary[PoolManager, Provisioner] = weakref.WeakKeyDictionary()


def provisioner_of(manager: PoolManager, store: Store) -> Provisioner:
    """The one :class:`Provisioner` of a pool manager (made on first use).

    Args:
        manager: the orchestrator's :class:`~orchestrator_core.pools.PoolManager`.
        store: the orchestrator's store.

    Returns:
        The manager's provisioner.
    """
    found = _PROVISIONERS.get(manager)
    if found is None:
        found = _PROVISIONERS[manager] = Provisioner(manager, store)
    return found
