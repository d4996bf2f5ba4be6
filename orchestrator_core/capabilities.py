"""What ``GET /v1/capabilities`` advertises: models, types, tools, prices and every limit
(NERVE-4076)."""

from __future__ import annotations

from contracts.events import FrameType
from contracts.pools import Capabilities, ModelCapability, PriceInfo
from contracts.steps import StepType
from orchestrator_core.config import ServerConfig
from orchestrator_core.facts import MAX_FLOW_FACTS_LIMIT
from orchestrator_core.navigation import MAX_LIMIT
from orchestrator_core.pools import PoolManager
from worker_adapters.base import ToolExecutors

__all__ = ["build_capabilities", "limits_of"]

SERVER_LIMITS = {"max_labels": 64, "max_label_key_chars": 128, "max_label_value_chars": 1024,
                 "max_id_chars": 128, "max_client_token_chars": 256,
                 "max_list_page": MAX_LIMIT, "max_flow_facts_page": MAX_FLOW_FACTS_LIMIT,
                 "max_run_facts_page": 10_000}
"""Bounds fixed by the wire types and the list routes (``contracts.limits``, NERVE-4061,
NERVE-4075)."""


def limits_of(config: ServerConfig) -> dict[str, int]:
    """Every size and count bound a request meets, by name.

    Args:
        config: the operator configuration.

    Returns:
        Bytes for ``*_bytes``, milliseconds for ``*_ms``, counts otherwise.
    """
    fs = config.fs_limits
    return {
        "max_body_bytes": config.max_body_bytes,
        "max_json_depth": config.max_json_depth,
        "max_recorded_value_bytes": config.max_recorded_value_bytes,
        "max_gate_work": config.max_gate_work,
        "max_active_steps": config.max_active_steps,
        "max_queue_per_pool": max((p.queue_capacity for p in config.pools), default=0),
        "fs_max_bytes_written": fs.max_bytes_written,
        "fs_max_files": fs.max_files,
        "fs_max_file_bytes": fs.max_file_bytes,
        "heartbeat_ms": config.heartbeat_ms,
        "disconnect_grace_ms": config.disconnect_grace_ms,
        **SERVER_LIMITS,
    }


def build_capabilities(config: ServerConfig, pools: PoolManager, tools: ToolExecutors,
                       server_version: str, sandbox_parents: list[str]) -> Capabilities:
    """The capabilities document for one tenant.

    Args:
        config: the operator configuration (prices, limits).
        pools: the pools (their models and whether they constrain decoding).
        tools: the operator's tool executors.
        server_version: ``orchestratord <version>``.
        sandbox_parents: the tenant's own sandbox directories (POLICY-3010).

    Returns:
        Models in pool order, each with its pools and features; every Step type and
        frame type; the executors; each model's price; :func:`limits_of`.
    """
    models: dict[str, ModelCapability] = {}
    for pool in pools.pools.values():
        for m in pool.config.models:
            cap = models.setdefault(m.id, ModelCapability(
                id=m.id, family=m.family, context_tokens=m.context_tokens,
                features=["completion", "chat", "stream", "seed", "strict_replay"],
                pools=[]))
            cap.pools.append(pool.pool_id)
            if pool.constrained_decoding() and "json_schema" not in cap.features:
                cap.features += ["json_schema", "llm_plan"]
    table = config.prices
    prices = {}
    for model_id in models:
        price = table.models.get(model_id)
        prices[model_id] = PriceInfo(
            usd_per_mtok_in=price.usd_per_mtok_in if price else 0.0,
            usd_per_mtok_out=price.usd_per_mtok_out if price else 0.0)
    return Capabilities(models=list(models.values()), server_version=server_version,
                        sandbox_parents=sandbox_parents, limits=limits_of(config),
                        step_types=[t.value for t in StepType],
                        frame_types=[t.value for t in FrameType],
                        tool_executors=tools.catalogue(), price_version=table.version,
                        prices=prices)
