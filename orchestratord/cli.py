"""``orchestratord`` command line: ``serve``, ``openapi``, ``config check``, and the commands of the
modules in :data:`COMMAND_MODULES` (``runs ...``, ``flows ...``, ``pools``).

A command module has ``register(sub, groups)``: ``sub`` is the top-level subparsers,
``groups`` the shared command groups by name (``"runs"``: the subparsers of
``orchestratord runs``), so several modules add commands to one group. Each command's
parser sets ``handler`` (``args -> exit code``) with ``set_defaults``.

The demo is a client of the server and lives outside this package: ``bash tools/demo.sh``
(``python -m tools.demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Callable

import msgspec

from contracts.errors import InvalidParams
from orchestrator_core.config import ServerConfig, load_config, mock_config
from orchestrator_core.config_check import ConfigError, ConfigProblem, read_config
from orchestratord.cli_config import (
    add_config_command,
    checked_config,
    quiet_embed_warning,
    run_config_command,
    startup_banner,
)
from orchestratord.logs import LOG_FORMATS, configure_logging
from worker_adapters.base import Drivers

__all__ = ["COMMAND_MODULES", "main", "serve"]

COMMAND_MODULES = (
    "orchestratord.cli_browse",
    "orchestratord.cli_recordings",
)
"""The modules that add commands, one a line (see the module docstring)."""


def _config(args: argparse.Namespace) -> ServerConfig:
    """The config of ``serve``: the file (or the default), with ``--mock`` replacing only
    its pools by the mock engine's, and ``--host``/``--port``/``--data-dir``/``--store``/
    ``--store-schema`` on top (PG-9052)."""
    cfg = read_config(args.config) if args.config else None
    if getattr(args, "mock", False):
        mock_pools = mock_config().pools
        cfg = mock_config() if cfg is None else msgspec.structs.replace(cfg, pools=mock_pools)
    elif cfg is None:
        cfg = load_config(None)
    flags = (("host", args.host), ("port", args.port), ("data_dir", args.data_dir),
             ("store", getattr(args, "store", None)),
             ("store_schema", getattr(args, "store_schema", None)))
    overrides = {k: v for k, v in flags if v is not None}
    try:
        return msgspec.structs.replace(cfg, **overrides)
    except InvalidParams as exc:  # a flag's value refused: one line, exit 2 (OBS-8061)
        field = str((exc.data or {}).get("field", "(flags)"))
        raise ConfigError([ConfigProblem("<command line>", field,
                                         exc.message.removeprefix("config: "),
                                         f"fix --{field.replace('_', '-')}")]) from None


LOOPS = ("auto", "uvloop", "asyncio")
"""The values of ``serve --loop`` (OBS-8069)."""


def loop_factory(loop: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on (OBS-8069).

    Args:
        loop: ``uvloop``, ``asyncio`` (the standard library's), or ``auto``: uvloop where
            it is installed (it is a dependency except on Windows), else asyncio.

    Returns:
        A factory for :class:`asyncio.Runner`, or None for the standard loop.

    Raises:
        SystemExit: ``uvloop`` asked for and not installed.
    """
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise SystemExit("orchestratord: --loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def serve(config: ServerConfig, drivers: Drivers | None = None, loop: str = "auto") -> None:
    """Run the app on Granian's embedded server until SIGINT or SIGTERM; print the
    startup banner once the pools are up (OBS-8067).

    One process: the engine replicas are its children and die with it.

    Args:
        config: the server config.
        drivers: engine name -> driver (default: every engine of
            :func:`worker_adapters.registry.default_drivers`; benchmarks pass their own).
        loop: the event loop, one of :data:`LOOPS` (OBS-8069).
    """
    from granian.constants import Interfaces
    from granian.server.embed import Server

    from orchestratord.app import create_app
    from orchestratord.auth import check_bind
    from orchestratord.telemetry import configure_tracing

    refusal = check_bind(config)
    if refusal is not None:
        raise SystemExit(f"orchestratord: {refusal}")

    async def run() -> None:
        app = create_app(config, drivers=drivers)
        app.on_startup.append(startup_banner(config))
        quiet_embed_warning()
        server = Server(app,
                        address=config.host, port=config.port,
                        interface=Interfaces.ASGI, log_access=False, backlog=1024)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    provider = configure_tracing()  # from the OTEL_* variables only (OBS-8000)
    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            runner.run(run())
    finally:
        if provider is not None:
            provider.shutdown()  # exports what the batch still holds


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orchestratord`` command."""
    parser = argparse.ArgumentParser(prog="orchestratord", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p_serve = sub.add_parser("serve", help="run the HTTP server")
    p_serve.add_argument("--config", help="TOML or JSON config (default: one CPU pool, "
                         "llama.cpp, SmolLM2-135M-Instruct)")
    p_serve.add_argument("--mock", action="store_true",
                         help="use the mock engine pool (replaces only the pools of --config)")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--data-dir")
    p_serve.add_argument("--store", help="a postgresql:// DSN to keep the event log in "
                         "PostgreSQL (default: SQLite under the data dir)")
    p_serve.add_argument("--store-schema", help="the PostgreSQL schema of the store's "
                         "tables (default: public)")
    p_serve.add_argument("--log-format", choices=LOG_FORMATS, default="logfmt",
                         help="one JSON object or one logfmt line per log event (OBS-8020)")
    p_serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                         default="info", help="the least severe level written (OBS-8020)")
    p_serve.add_argument("--loop", choices=LOOPS, default="auto",
                         help="the event loop: uvloop where installed (auto), or asyncio "
                         "(OBS-8069)")

    sub.add_parser("openapi", help="print the OpenAPI document")
    add_config_command(sub)

    runs = sub.add_parser("runs", help="browse, follow and move Runs (over HTTP)")
    groups = {"runs": runs.add_subparsers(dest="runs_cmd", required=True)}
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, groups)

    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args))
    if args.cmd == "serve":
        config = checked_config(lambda: _config(args), args.config or "<default>")
        configure_logging(args.log_format, secrets=config.auth_tokens,
                          level=logging.getLevelName(args.log_level.upper()))
        serve(config, loop=args.loop)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.cmd == "config":
        return run_config_command(args)
    if args.cmd == "openapi":
        from orchestratord.openapi import openapi_json

        sys.stdout.write(openapi_json())
        return 0
    return 2
