"""Pool and capability wire types (PLACE-5000, client contract ``capabilities()``)."""

from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec

__all__ = [
    "Capabilities",
    "EngineInfo",
    "ModelCapability",
    "ModelInfo",
    "PoolInfo",
    "PriceInfo",
    "ProvisionModel",
    "ProvisionRequest",
    "ReplicaHealth",
    "ReplicaInfo",
    "ToolExecutorInfo",
]


class ReplicaHealth(enum.StrEnum):
    """Replica lifecycle as the pool manager sees it."""

    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPED = "stopped"
    DRAINING = "draining"
    """Takes no new placement; the Steps already placed on it finish (PLACE-5108)."""
    REMOVED = "removed"
    """Drained and disconnected; kept in its pool's view for the record (PLACE-5109)."""


class EngineInfo(msgspec.Struct, frozen=True):
    """The engine behind a pool; every field here is a determinism input.

    ``batch_invariant``: the engine's output for a request does not depend on the other
    requests it computes at the same time. ``isolated_slots``: each slot is an engine
    context of its own serving one request at a time (PLACE-5005).
    """

    name: str
    version: str
    build_fingerprint: str
    settings: dict[str, Any]
    batch_invariant: bool = False
    isolated_slots: bool = False


class ModelInfo(msgspec.Struct, frozen=True):
    """A model a pool serves. ``sha256`` is the hash of the weights file (``model_hash``)."""

    id: str
    family: str
    context_tokens: int
    sha256: str
    features: list[str]


class ReplicaInfo(msgspec.Struct):
    """One engine replica (a separate process, or an in-process mock).

    ``requests`` and ``tokens_generated`` count what the adapter sent and received since
    the replica (re)started. ``breaker`` is its circuit breaker state (closed, open,
    half_open) and ``breaker_failures`` its consecutive engine failures. The replica's
    own engine URL is never part of this view (PLACE-5009): its port is loopback only and
    would bypass recording, budgets and metrics.
    """

    replica_id: str
    health: ReplicaHealth
    slots: int
    busy: int
    queued: int
    restarts: int
    requests: int = 0
    tokens_generated: int = 0
    breaker: str = "closed"
    breaker_failures: int = 0
    pid: int | None = None


class PoolInfo(msgspec.Struct):
    """``GET /v1/pools/{id}``: capabilities, engine, models, replicas and load."""

    pool_id: str
    kind: str
    tags: dict[str, str]
    engine: EngineInfo
    models: list[ModelInfo]
    replicas: list[ReplicaInfo]
    capabilities: dict[str, Any]
    queue_capacity: int


class ModelCapability(msgspec.Struct):
    """One advertised model: the id is opaque and must not be parsed by clients."""

    id: str
    family: str
    context_tokens: int
    features: list[str]
    pools: list[str]


class PriceInfo(msgspec.Struct, frozen=True):
    """A model's price in USD per million tokens; 0.0 when the operator set none."""

    usd_per_mtok_in: float
    usd_per_mtok_out: float


class ToolExecutorInfo(msgspec.Struct, frozen=True):
    """One operator tool executor a Flow's tool may name (NERVE-4076).

    ``args_schema`` is the JSON Schema of the arguments object the executor takes: the
    built-in tools' exact input, an ``argv`` template's ``{name}`` placeholders as
    required scalars, or any object for ``http``. ``timeout_ms`` and
    ``max_output_bytes`` are its per-call limits.
    """

    name: str
    kind: str
    args_schema: dict[str, Any]
    timeout_ms: int
    max_output_bytes: int


class Capabilities(msgspec.Struct):
    """``GET /v1/capabilities``: opaque model ids, limits and the server version.

    ``step_types`` and ``frame_types`` name every Step type a submission may take and
    every SSE event name; ``tool_executors`` the operator's executors; ``prices`` each
    listed model's price (of price table ``price_version``); ``limits`` every size and
    count bound a request meets (NERVE-4076).

    ``sandbox_parents`` are the caller's own sandbox directories, one per operator allowed
    parent: a Run's ``fs_policy.roots`` must lie strictly inside one of them, and a
    relative root is resolved inside the first (POLICY-3010). A record Run's missing
    roots are created when it is created.
    """

    models: list[ModelCapability]
    server_version: str
    limits: dict[str, int]
    sandbox_parents: list[str] = msgspec.field(default_factory=list)
    step_types: list[str] = msgspec.field(default_factory=list)
    frame_types: list[str] = msgspec.field(default_factory=list)
    tool_executors: list[ToolExecutorInfo] = msgspec.field(default_factory=list)
    price_version: str = ""
    prices: dict[str, PriceInfo] = msgspec.field(default_factory=dict)


class ProvisionModel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The model of a pool created by ``POST /v1/pools/provision`` (PLACE-5102).

    ``id`` is the opaque id clients will name; ``sha256`` a declared weights hash (64 hex
    digits), else the model hash is derived from what the server reports it serves.
    """

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    family: Annotated[str, msgspec.Meta(max_length=64)] = ""
    context_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_048_576)] = 2048
    sha256: Annotated[str, msgspec.Meta(max_length=71)] | None = None


class ProvisionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/pools/provision``: one remote OpenAI-compatible replica (PLACE-5100).

    ``url`` is the engine server's base URL (``http(s)://host[:port]``). ``pool_id``
    names an existing ``openai_http`` pool, or a new one; a new pool needs ``model`` and
    takes ``dialect``, ``options``, ``slots_per_replica``, ``queue_capacity`` and
    ``tags``, which an existing pool refuses (its config is fixed). ``expect_model``,
    when set, must equal the model the server reports it serves.
    """

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    pool_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    model: ProvisionModel | None = None
    dialect: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    options: Annotated[dict[str, str | int | float | bool],
                       msgspec.Meta(max_length=16)] | None = None
    slots_per_replica: Annotated[int, msgspec.Meta(ge=1, le=64)] | None = None
    queue_capacity: Annotated[int, msgspec.Meta(ge=1, le=4096)] | None = None
    tags: Annotated[dict[str, Annotated[str, msgspec.Meta(max_length=64)]],
                    msgspec.Meta(max_length=16)] | None = None
    expect_model: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
