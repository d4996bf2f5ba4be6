"""Pools of engine replicas: provisioning, health checks, slots and restarts (PLACE-5000/5002).

A :class:`Replica` is one engine endpoint with ``slots`` concurrent requests. The
:class:`PoolManager` never names an engine: the app injects a driver registry (engine
name -> :class:`~worker_adapters.base.EngineDriver`, PLACE-5006) and each pool's
``engine`` picks its driver, which computes the pool's identity and starts its replicas
(a local worker process, an in-process mock, a remote URL). The manager health-checks
local processes every second, restarts one that dies, and stops them on shutdown. An
engine whose output depends on its batch and whose slots share one serves one request at
a time per replica (PLACE-5005).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Protocol

import anyio

from contracts.errors import InvalidParams, PoolUnavailable
from contracts.pools import EngineInfo, ModelInfo, PoolInfo, ReplicaHealth, ReplicaInfo
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.clock import Clock, SystemClock
from orchestrator_core.config import ServerConfig
from worker_adapters.base import (
    Drivers,
    EngineAdapter,
    EngineDriver,
    EngineIdentity,
    PoolConfig,
    ReplicaProcess,
    ReplicaSpec,
)

__all__ = ["Pool", "PoolManager", "Replica", "SlotGate"]

SLOT_RETRY_S = 0.5
"""How long a Step waits for a give-back's wake-up before asking a shared replica for a
slot again anyway, in case the notification was lost (s, PG-9107)."""


class SlotGate(Protocol):
    """The slots of remote replicas several processes share (PG-9107)."""

    def take_slot(self, replica: str, slots: int) -> int | None:
        """Hold a free slot of ``replica`` (of ``slots``), or None when all are held."""

    def give_slot(self, replica: str, slot: int) -> None:
        """Give back a slot :meth:`take_slot` returned (and wake the waiters of every
        process)."""

    def slot_freed(self, replica: str) -> anyio.Event:
        """Set when any process gives back a slot of ``replica``; take it before asking."""

log = logging.getLogger("orchestrator.pools")


class Replica:
    """One engine endpoint and its slots.

    Attributes:
        replica_id: ``<pool_id>/r<index>``, stable across restarts.
        slots: concurrent requests it serves; more wait in the pool's queue.
        busy / waiting: Steps holding / waiting for a slot.
        avg_step_ms: moving average of slot hold time, for ``predicted_start_ms``.
        breaker: its circuit breaker, on the pool manager's clock (POLICY-3002).
    """

    def __init__(self, pool_id: str, index: int, slots: int, breaker: CircuitBreaker) -> None:
        self.pool_id = pool_id
        self.replica_id = f"{pool_id}/r{index}"
        self.index = index
        self.slots = slots
        self.busy = 0
        self.waiting = 0
        self.restarts = 0
        self.health = ReplicaHealth.STARTING
        self.adapter: EngineAdapter | None = None
        self.process: ReplicaProcess | None = None  # a local engine process
        self.avg_step_ms = 1000.0
        self.breaker = breaker
        self._sem = anyio.Semaphore(slots)
        self.gate: tuple[SlotGate, str] | None = None  # shared slots and this one's key
        self._shared: list[int] = []  # the shared slots held

    @property
    def free_slots(self) -> int:
        """Slots not held now (negative load counts waiters)."""
        return self.slots - self.busy - self.waiting

    def engine(self) -> EngineAdapter:
        """The adapter; raises PoolUnavailable when the replica is not ready (a draining
        one still serves the Steps placed on it before its drain, PLACE-5108)."""
        if self.adapter is None or self.health not in (ReplicaHealth.READY,
                                                       ReplicaHealth.DRAINING):
            raise PoolUnavailable(f"replica {self.replica_id} is {self.health.value}",
                                  data={"replica_id": self.replica_id})
        return self.adapter

    async def acquire(self) -> None:
        """Wait for a free slot (cancellable)."""
        self.waiting += 1
        try:
            await self._sem.acquire()
            if self.gate is not None:  # and one of the slots every process shares
                try:
                    gate, key = self.gate
                    # woken by any process's give-back (its NOTIFY), re-asked anyway
                    # every SLOT_RETRY_S in case a notification was lost
                    while True:
                        freed = gate.slot_freed(key)
                        if (slot := gate.take_slot(key, self.slots)) is not None:
                            break
                        with self.breaker.clock.move_on_after(SLOT_RETRY_S):
                            await freed.wait()
                    self._shared.append(slot)
                except BaseException:
                    self._sem.release()
                    raise
        finally:
            self.waiting -= 1
        self.busy += 1

    def release(self, held_ms: float) -> None:
        """Give a slot back and update the moving average of hold time (ms)."""
        self.busy -= 1
        self.avg_step_ms = 0.8 * self.avg_step_ms + 0.2 * held_ms
        if self.gate is not None and self._shared:
            self.gate[0].give_slot(self.gate[1], self._shared.pop())
        self._sem.release()

    def info(self) -> ReplicaInfo:
        """Wire view of the replica: its engine URL is kept out of it (PLACE-5009)."""
        pid = self.process.pid if self.process is not None else None
        return ReplicaInfo(replica_id=self.replica_id, health=self.health, slots=self.slots,
                           busy=self.busy, queued=self.waiting, restarts=self.restarts,
                           requests=self.adapter.requests if self.adapter else 0,
                           tokens_generated=self.adapter.tokens_generated if self.adapter
                           else 0, breaker=self.breaker.state.value,
                           breaker_failures=self.breaker.failures, pid=pid)


class Pool:
    """A set of identical replicas serving the same models with the same engine.

    Args:
        config: the pool's config.
        identity: its engine's identity.
        clock: injected time for the replicas' circuit breakers (POLICY-3002).
        breaker_failures: consecutive failures that open a replica's breaker.
        breaker_reset_s: seconds (of ``clock``) a replica's breaker stays open.
    """

    def __init__(self, config: PoolConfig, identity: EngineIdentity,
                 clock: Clock | None = None, *, breaker_failures: int = 3,
                 breaker_reset_s: float = 5.0) -> None:
        self.config = config
        self.pool_id = config.pool_id
        self.identity = identity
        clock = clock or SystemClock()
        self.replicas = [
            Replica(config.pool_id, i, self.effective_slots(),
                    CircuitBreaker(f"{config.pool_id}/r{i}", clock,
                                   failure_threshold=breaker_failures,
                                   reset_timeout_s=breaker_reset_s))
            for i in range(config.replicas)]
        self.models = {m.id: m for m in config.models}
        self.removed: list[Replica] = []  # drained away, newest last (PLACE-5109)
        self.next_index = config.replicas  # indexes are never reused (PLACE-5105)

    def effective_slots(self) -> int:
        """Concurrent requests per replica: ``slots_per_replica``, or 1 when the engine is
        not batch-invariant and its slots share a batch, so that every record and
        strict_replay step runs alone in its batch (PLACE-5005)."""
        ident = self.identity
        if ident.batch_invariant or ident.isolated_slots:
            return self.config.slots_per_replica
        return 1

    def queued(self) -> int:
        """Steps waiting for a slot across the pool."""
        return sum(r.waiting for r in self.replicas)

    def constrained_decoding(self) -> bool:
        """Whether the pool's engine declares a way to constrain decoding to a JSON
        Schema (``EngineAdapter.constrained_decoding``), so ``json_schema`` and
        ``llm_plan`` are features of its models; no engine is named here."""
        return any(r.adapter is not None and r.adapter.constrained_decoding is not None
                   for r in self.replicas)

    def info(self) -> PoolInfo:
        """Wire view: engine, models, replicas, load and capabilities."""
        ident = self.identity
        cap: dict[str, Any] = {"device": self.config.kind, "engines": [ident.name],
                               "features": ["stream", "seed", "cancel"],
                               "queue_depth": self.queued()}
        if "system_info" in ident.settings:
            cap["cpu_features"] = ident.settings["system_info"]
        cap.update(_gpu_capabilities() if self.config.kind == "gpu" else {})
        return PoolInfo(
            pool_id=self.pool_id, kind=self.config.kind, tags=dict(self.config.tags),
            engine=EngineInfo(name=ident.name, version=ident.version,
                              build_fingerprint=ident.build_fingerprint,
                              settings={k: v for k, v in ident.settings.items()
                                        if k != "system_info"},
                              batch_invariant=ident.batch_invariant,
                              isolated_slots=ident.isolated_slots),
            models=[ModelInfo(id=m.id, family=m.family, context_tokens=m.context_tokens,
                              sha256=ident.model_hash, features=["completion", "chat"])
                    for m in self.config.models],
            replicas=[r.info() for r in (*self.replicas, *self.removed)],
            capabilities=cap, queue_capacity=self.config.queue_capacity,
        )


def _gpu_capabilities() -> dict[str, Any]:
    """VRAM and compute capability through NVML, when the library and a GPU exist."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return {"nvml": "unavailable"}
    try:  # pragma: no cover - needs an accelerator
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
        return {"vram_mb": mem.total // (1 << 20), "compute_capability": f"{major}.{minor}"}
    except Exception as exc:  # pragma: no cover - NVML raises its own error types
        return {"nvml": f"error: {exc}"}


class PoolManager:
    """Owns every pool: provisions replicas, watches their health, stops them.

    Args:
        config: the server config.
        data_dir: where engine logs go.
        drivers: engine name -> driver (PLACE-5006).
        clock: injected time, for the replicas' circuit breakers and the watcher.
    """

    def __init__(self, config: ServerConfig, data_dir: pathlib.Path, drivers: Drivers,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.data_dir = data_dir
        self.drivers = drivers
        self.pools: dict[str, Pool] = {}
        self.slot_gate: SlotGate | None = None
        """Set on a shared store: a remote replica's slots are counted across processes
        (PG-9107)."""

    # -- provisioning ------------------------------------------------------------------

    def _driver(self, pc: PoolConfig) -> EngineDriver:
        """The driver of the pool's engine.

        Raises:
            InvalidParams: no driver has that name; ``data["field"]`` is ``engine``.
        """
        try:
            return self.drivers[pc.engine]
        except KeyError:
            raise InvalidParams(
                f"pool {pc.pool_id}: no engine driver named {pc.engine!r}",
                data={"field": "engine", "pool_id": pc.pool_id,
                      "engines": sorted(self.drivers)}) from None

    async def _start_replica(self, pool: Pool, replica: Replica) -> None:
        spec = ReplicaSpec(replica_id=replica.replica_id, index=replica.index,
                           slots=replica.slots, data_dir=self.data_dir)
        started = await self._driver(pool.config).start(pool.config, pool.identity, spec)
        replica.adapter, replica.process = started.adapter, started.process
        if self.slot_gate is not None and replica.index < len(pool.config.urls):
            replica.gate = (self.slot_gate, pool.config.urls[replica.index])
        replica.health = ReplicaHealth.READY

    async def start(self) -> None:
        """Provision every pool's replicas concurrently; a failed replica is UNHEALTHY."""
        for pc in self.config.pools:
            pool = Pool(pc, await self._driver(pc).identity(pc), self.clock,
                        breaker_failures=self.config.breaker_failures,
                        breaker_reset_s=self.config.breaker_reset_ms / 1000.0)
            self.pools[pc.pool_id] = pool

        async def start_one(pool: Pool, rep: Replica) -> None:
            try:
                await self._start_replica(pool, rep)
            except Exception as exc:
                log.warning("replica %s failed to start: %s", rep.replica_id, exc)
                rep.health = ReplicaHealth.UNHEALTHY

        async with anyio.create_task_group() as tg:
            for pool in self.pools.values():
                for rep in pool.replicas:
                    tg.start_soon(start_one, pool, rep)

    async def watch(self, interval_s: float = 1.0) -> None:
        """Background task: restart local replicas whose process died (PLACE-5002).

        Args:
            interval_s: seconds of the injected clock between two looks (NERVE-4060).
        """
        while True:
            await self.clock.sleep(interval_s)
            for pool in self.pools.values():
                for rep in pool.replicas:
                    if rep.process is not None and rep.health is not \
                            ReplicaHealth.DRAINING and not rep.process.alive():
                        rep.health = ReplicaHealth.UNHEALTHY
                        rep.restarts += 1
                        await rep.process.stop()
                        try:
                            await self._start_replica(pool, rep)
                        except Exception:
                            rep.health = ReplicaHealth.UNHEALTHY

    async def stop(self) -> None:
        """Stop every local replica process and close adapters; idempotent."""
        with anyio.CancelScope(shield=True):
            for pool in self.pools.values():
                for rep in pool.replicas:
                    if rep.adapter is not None:
                        await rep.adapter.aclose()
                    if rep.process is not None:
                        await rep.process.stop()
                    rep.health = ReplicaHealth.STOPPED

    # -- lookups -----------------------------------------------------------------------

    def all_replicas(self) -> list[Replica]:
        """Every replica of every pool."""
        return [r for p in self.pools.values() for r in p.replicas]

    def find_replica(self, replica_id: str) -> tuple[Pool, Replica] | None:
        """The pool and replica with this id, or None."""
        for pool in self.pools.values():
            for rep in pool.replicas:
                if rep.replica_id == replica_id:
                    return pool, rep
        return None

    def model_ids(self) -> dict[str, list[str]]:
        """Model id -> pools that serve it."""
        out: dict[str, list[str]] = {}
        for pool in self.pools.values():
            for mid in pool.models:
                out.setdefault(mid, []).append(pool.pool_id)
        return out

    def ready(self) -> bool:
        """True when every pool has at least one ready replica; a pool whose every
        replica was drained away is not waited for (PLACE-5109)."""
        return bool(self.pools) and all(
            any(r.health is ReplicaHealth.READY for r in p.replicas)
            for p in self.pools.values() if p.replicas or not p.removed)
