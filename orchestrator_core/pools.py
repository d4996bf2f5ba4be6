"""Pools of engine replicas: provisioning, health checks, slots and restarts (PLACE-5000/5002).

A :class:`Replica` is one engine endpoint with ``slots`` concurrent requests. For the
``llamacpp`` engine each replica is a worker process (one independent context per slot)
the :class:`PoolManager` starts from an explicit environment, checks against the pool's
engine identity, health-checks every second, restarts when it dies, and stops on
shutdown; ``mock`` replicas live in-process; ``openai_http`` replicas are remote URLs from
the config. An engine whose output depends on its batch and whose slots share one
(``openai_http`` unless declared batch-invariant) serves one request at a time per
replica (PLACE-5005).
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any, cast

import anyio

from contracts.errors import EngineError, PoolUnavailable
from contracts.pools import EngineInfo, ModelInfo, PoolInfo, ReplicaHealth, ReplicaInfo
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.canonical import b3
from orchestrator_core.clock import Clock, SystemClock
from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig
from worker_adapters.base import EngineAdapter, EngineIdentity
from worker_adapters.mock import MockEngine, default_handler, mock_identity

__all__ = ["EngineFactory", "Pool", "PoolManager", "Replica"]

EngineFactory = Callable[[PoolConfig, int], EngineAdapter]
"""Builds the adapter for replica ``index`` of a mock pool (tests inject handlers)."""

log = logging.getLogger("orchestrator.pools")


def remote_identity(pc: PoolConfig, model_path: pathlib.Path | None) -> EngineIdentity:
    """Identity of an ``openai_http`` pool: what its config declares about the server.

    The server is not ours to inspect, so its ``dialect``, ``engine_version``,
    ``batch_invariant`` declaration and every other option are folded into the build
    fingerprint as the operator states them (PLACE-5005).
    """
    from worker_adapters.llamacpp import file_sha256

    sha = pc.models[0].sha256
    model_hash = ("sha256:" + sha.removeprefix("sha256:") if sha
                  else file_sha256(model_path) if model_path is not None else "sha256:unknown")
    settings = {**{k: v for k, v in pc.options.items() if isinstance(v, int | float | str)},
                "env": dict(pc.env)}
    return EngineIdentity(
        name=f"openai_http:{pc.options.get('dialect', 'openai')}",
        version=str(pc.options.get("engine_version", "unknown")),
        build_fingerprint=b3({"engine": "openai_http", "settings": settings}),
        model_hash=model_hash, settings=settings,
        batch_invariant=pc.options.get("batch_invariant") is True)


class Replica:
    """One engine endpoint and its slots.

    Attributes:
        replica_id: ``<pool_id>/r<index>``, stable across restarts.
        slots: concurrent requests it serves; more wait in the pool's queue.
        busy / waiting: Steps holding / waiting for a slot.
        avg_step_ms: moving average of slot hold time, for ``predicted_start_ms``.
    """

    def __init__(self, pool_id: str, index: int, slots: int) -> None:
        self.pool_id = pool_id
        self.replica_id = f"{pool_id}/r{index}"
        self.index = index
        self.slots = slots
        self.busy = 0
        self.waiting = 0
        self.restarts = 0
        self.health = ReplicaHealth.STARTING
        self.adapter: EngineAdapter | None = None
        self.process: Any = None  # LlamaCppServerProcess for local llama.cpp replicas
        self.avg_step_ms = 1000.0
        self.breaker = CircuitBreaker(self.replica_id, SystemClock())
        self._sem = anyio.Semaphore(slots)

    @property
    def free_slots(self) -> int:
        """Slots not held now (negative load counts waiters)."""
        return self.slots - self.busy - self.waiting

    def engine(self) -> EngineAdapter:
        """The adapter; raises PoolUnavailable when the replica is not ready."""
        if self.adapter is None or self.health is not ReplicaHealth.READY:
            raise PoolUnavailable(f"replica {self.replica_id} is {self.health.value}",
                                  data={"replica_id": self.replica_id})
        return self.adapter

    async def acquire(self) -> None:
        """Wait for a free slot (cancellable)."""
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1

    def release(self, held_ms: float) -> None:
        """Give a slot back and update the moving average of hold time (ms)."""
        self.busy -= 1
        self.avg_step_ms = 0.8 * self.avg_step_ms + 0.2 * held_ms
        self._sem.release()

    def info(self) -> ReplicaInfo:
        """Wire view of the replica."""
        pid = self.process.proc.pid if self.process is not None and self.process.proc else None
        url = self.process.url if self.process is not None else None
        return ReplicaInfo(replica_id=self.replica_id, health=self.health, slots=self.slots,
                           busy=self.busy, queued=self.waiting, restarts=self.restarts,
                           requests=self.adapter.requests if self.adapter else 0,
                           tokens_generated=self.adapter.tokens_generated if self.adapter
                           else 0, breaker=self.breaker.state.value,
                           breaker_failures=self.breaker.failures, pid=pid, url=url)


class Pool:
    """A set of identical replicas serving the same models with the same engine."""

    def __init__(self, config: PoolConfig, identity: EngineIdentity) -> None:
        self.config = config
        self.pool_id = config.pool_id
        self.identity = identity
        self.replicas = [Replica(config.pool_id, i, self.effective_slots())
                         for i in range(config.replicas)]
        self.models = {m.id: m for m in config.models}

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
            replicas=[r.info() for r in self.replicas],
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


async def _probe(url: str, timeout_s: float = 5.0) -> None:
    """Health check of a remote OpenAI-compatible replica: ``GET /v1/models`` must be 200.

    Raises:
        EngineError: the replica does not answer, or not with 200.
    """
    import httpx

    try:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            status = (await client.get("/v1/models")).status_code
    except httpx.HTTPError as exc:
        raise EngineError(f"replica {url} is unreachable: {exc}", data={"url": url}) from exc
    if status != 200:
        raise EngineError(f"replica {url} answered {status} to GET /v1/models",
                          data={"url": url, "status": status})


class PoolManager:
    """Owns every pool: provisions replicas, watches their health, stops them.

    Args:
        config: the server config.
        data_dir: where engine logs go.
        engine_factory: optional builder of mock adapters (tests script tokens/faults).
    """

    def __init__(self, config: ServerConfig, data_dir: pathlib.Path,
                 engine_factory: EngineFactory | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.data_dir = data_dir
        self.engine_factory = engine_factory
        self.pools: dict[str, Pool] = {}
        self._model_paths: dict[str, pathlib.Path] = {}
        self._tokenizers: dict[pathlib.Path, Any] = {}

    # -- provisioning ------------------------------------------------------------------

    def _model_path(self, model: ModelConfig) -> pathlib.Path:
        from worker_adapters.llamacpp import default_model_path

        return pathlib.Path(model.path) if model.path else default_model_path()

    def _llama_settings(self, pc: PoolConfig) -> dict[str, Any]:
        from worker_adapters.llamacpp import llamacpp_settings

        return llamacpp_settings(pc.options, pc.models[0].context_tokens)

    def _identity(self, pc: PoolConfig) -> EngineIdentity:
        if pc.engine == "mock":
            sha = pc.models[0].sha256 or "0" * 64
            return mock_identity(model_hash="sha256:" + sha.removeprefix("sha256:"),
                                 **{k: v for k, v in pc.options.items()
                                    if isinstance(v, int | float | str)},
                                 **({"env": dict(pc.env)} if pc.env else {}))
        if pc.engine == "openai_http":
            return remote_identity(pc, self._model_path(pc.models[0]))
        from worker_adapters.llamacpp import llamacpp_identity, worker_env

        settings = self._llama_settings(pc)
        return llamacpp_identity(self._model_path(pc.models[0]), settings,
                                 worker_env(dict(pc.env), settings))

    def _tokenizer(self, path: pathlib.Path) -> Any:
        from worker_adapters.llamacpp import GgufTokenizer

        if path not in self._tokenizers:
            self._tokenizers[path] = GgufTokenizer(path)
        return self._tokenizers[path]

    async def _start_replica(self, pool: Pool, replica: Replica) -> None:
        pc = pool.config
        if pc.engine == "mock":
            if self.engine_factory is not None:
                replica.adapter = self.engine_factory(pc, replica.index)
            else:
                length = pc.options.get("length")
                replica.adapter = MockEngine(
                    default_handler(tokens_per_s=float(pc.options.get("tokens_per_s", 0)),
                                    length=int(length) if length is not None else None,
                                    utf8_split=pc.options.get("utf8_split") is True),
                    identity=pool.identity)
        elif pc.engine == "llamacpp":
            await self._start_worker(pool, replica)
        else:
            from worker_adapters.openai_http import Constraint, Dialect, OpenAIHttpEngine

            tok = self._tokenizer(self._model_path(pc.models[0]))
            url = pc.urls[replica.index]
            await _probe(url)
            option = pc.options.get("constraint")
            constraint = cast("Constraint | None", option if option in (
                "gbnf", "json_schema", "guided_json") else None)
            replica.adapter = OpenAIHttpEngine(
                url, pool.identity, tok, constraint=constraint,
                dialect=cast("Dialect", pc.options.get("dialect", "openai")))
        replica.health = ReplicaHealth.READY

    async def _start_worker(self, pool: Pool, replica: Replica) -> None:
        """Start a llama.cpp worker from the pool's explicit settings and environment, and
        refuse it unless what it observes of itself matches the pool's identity."""
        from worker_adapters.llamacpp import LlamaCppWorkerProcess, check_observed
        from worker_adapters.llamacpp_engine import LlamaCppEngine

        pc = pool.config
        path = self._model_path(pc.models[0])
        settings = {k: v for k, v in pool.identity.settings.items()
                    if k not in ("env", "library_sha256", "worker", "system_info")}
        proc = LlamaCppWorkerProcess(
            path, settings, pool.identity.settings["env"], replica.slots,
            self.data_dir / "engines" / f"{replica.replica_id.replace('/', '_')}.log")
        await proc.start()
        adapter = LlamaCppEngine(proc.url, pool.identity, self._tokenizer(path))
        try:
            check_observed(pool.identity, await adapter.engine_report())
        except BaseException:
            # Refused for good: the process is not kept, so it is not restarted either.
            await adapter.aclose()
            await proc.stop()
            raise
        replica.process = proc
        replica.adapter = adapter

    async def start(self) -> None:
        """Provision every pool's replicas concurrently; a failed replica is UNHEALTHY."""
        for pc in self.config.pools:
            if pc.engine == "openai_http" and len(pc.urls) < pc.replicas:
                raise PoolUnavailable(f"pool {pc.pool_id}: {pc.replicas} replicas but "
                                      f"{len(pc.urls)} urls")
            pool = Pool(pc, self._identity(pc))
            for rep in pool.replicas:
                rep.breaker = CircuitBreaker(
                    rep.replica_id, self.clock,
                    failure_threshold=self.config.breaker_failures,
                    reset_timeout_s=self.config.breaker_reset_ms / 1000.0)
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
        """Background task: restart local replicas whose process died."""
        while True:
            await anyio.sleep(interval_s)
            for pool in self.pools.values():
                for rep in pool.replicas:
                    if rep.process is not None and not rep.process.alive():
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
        """True when every pool has at least one ready replica."""
        return bool(self.pools) and all(
            any(r.health is ReplicaHealth.READY for r in p.replicas)
            for p in self.pools.values())
