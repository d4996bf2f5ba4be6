"""Semantic checks of an operator config, before anything is served (OBS-8060..8063).

:func:`read_config` decodes a file and :func:`check_config` checks what decoding cannot:
pool ids unique, pools and models present, sizes and limits positive, model files and argv
executor binaries present, remote engines reachable. Each problem is one
:class:`ConfigProblem`, printed as one line naming the file, the key and the fix; the
command line exits with status 2 and no traceback on any of them (OBS-8061).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import msgspec

from contracts.errors import OrchestratorError
from orchestrator_core.config import ServerConfig, load_config
from worker_adapters.base import ModelConfig, PoolConfig, ToolExecutorConfig

__all__ = ["ConfigError", "ConfigProblem", "check_config", "read_config"]

CONNECT_TIMEOUT_S = 2.0
"""How long a remote engine's TCP connect may take before it counts as unreachable."""

Probe = Callable[[str, int], bool]
"""``(host, port) -> reachable``; tests inject one, the default tries a TCP connect."""

ModelCheck = Callable[[PoolConfig, ModelConfig], "str | None"]
"""``(pool, model) -> problem or None`` for a model without ``path``: whether the
engine's default model is there. The core names no engine; the command line passes the
check of the engines it serves."""


class ConfigProblem(msgspec.Struct, frozen=True):
    """One mistake in a config file.

    Attributes:
        file: the config file (``<default>`` for the built-in config).
        key: the dotted key at fault, e.g. ``pools[0].models``.
        problem: what is wrong.
        fix: what to change.
    """

    file: str
    key: str
    problem: str
    fix: str

    def line(self) -> str:
        """The one line the command line prints: ``FILE: KEY: PROBLEM; FIX``."""
        return f"{self.file}: {self.key}: {self.problem}; {self.fix}"


class ConfigError(Exception):
    """A config that must not be served: one or more :class:`ConfigProblem`."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(p.line() for p in problems))
        self.problems = problems


def _tcp_probe(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def read_config(path: str | pathlib.Path) -> ServerConfig:
    """Decode a TOML or JSON config file, with every failure as one :class:`ConfigProblem`.

    Raises:
        ConfigError: the file is missing or unreadable, is not TOML/JSON, or does not
            decode into :class:`ServerConfig` (the key is msgspec's ``$.`` path, or the
            field a limit check named).
    """
    name = str(path)
    try:
        return load_config(path)
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, "(file)", exc.strerror or str(exc),
                                         "give the path of a readable TOML or JSON file")]) \
            from None
    except OrchestratorError as exc:
        cause = exc.__cause__
        key = str((exc.data or {}).get("field", "(document)"))
        text = str(cause) if cause is not None else exc.message
        if " - at `$." in text:
            text, _, at = text.partition(" - at `$.")
            key = at.rstrip("`")
        raise ConfigError([ConfigProblem(name, key, text, "see specs/30_pools_and_placement.md "
                                         "and specs/98_operations.md for the keys")]) from None
    except msgspec.DecodeError as exc:
        raise ConfigError([ConfigProblem(name, "(document)", str(exc),
                                         "fix the TOML/JSON syntax")]) from None


def check_config(cfg: ServerConfig, file: str = "<default>", *,
                 probe: Probe | None = None, default_model: ModelCheck | None = None) -> None:
    """Check what decoding cannot (OBS-8060, OBS-8062, OBS-8063).

    Args:
        cfg: the decoded config.
        file: its path, for the messages.
        probe: remote-engine reachability, ``(host, port) -> bool`` (default: a TCP
            connect with a 2 s timeout).
        default_model: checks a model that names no ``path`` (default: no check).

    Raises:
        ConfigError: every problem found, in file order.
    """
    problems = [ConfigProblem(file, key, problem, fix)
                for key, problem, fix in _problems(cfg, probe or _tcp_probe,
                                                   default_model or _no_model_check)]
    if problems:
        raise ConfigError(problems)


def _no_model_check(_pool: PoolConfig, _model: ModelConfig) -> str | None:
    return None


def _problems(cfg: ServerConfig, probe: Probe,
              default_model: ModelCheck) -> Iterator[tuple[str, str, str]]:
    if not cfg.pools:
        yield "pools", "no pool is configured", "add a [[pools]] table with at least one model"
    seen: dict[str, int] = {}
    for i, pool in enumerate(cfg.pools):
        if pool.pool_id in seen:
            yield (f"pools[{i}].pool_id", f"{pool.pool_id!r} is also the id of "
                   f"pools[{seen[pool.pool_id]}]", "give every pool its own pool_id")
        seen.setdefault(pool.pool_id, i)
        yield from _pool_problems(f"pools[{i}]", pool, probe, default_model)
    yield from _positive(cfg)
    for name, tool in (cfg.tools or {}).items():
        yield from _tool_problems(f"tools.{name}", tool)


def _positive(cfg: ServerConfig) -> Iterator[tuple[str, str, str]]:
    for key in ("commit_interval_ms", "commit_max_frames", "heartbeat_ms", "breaker_failures",
                "breaker_reset_ms", "max_active_steps", "max_body_bytes", "ephemeral_buffer",
                "max_json_depth"):
        if getattr(cfg, key) <= 0:
            yield key, f"{getattr(cfg, key)} is not positive", f"set {key} to a number above 0"
    if cfg.disconnect_grace_ms < 0:
        yield ("disconnect_grace_ms", f"{cfg.disconnect_grace_ms} is negative",
               "set disconnect_grace_ms to 0 or more")
    if not 0 <= cfg.port <= 65535:
        yield "port", f"{cfg.port} is not a TCP port", "set port between 1 and 65535"
    fs = cfg.fs_limits
    for key in ("max_bytes_written", "max_files", "max_file_bytes", "max_read_bytes"):
        if getattr(fs, key) <= 0:
            yield (f"fs_limits.{key}", f"{getattr(fs, key)} is not positive",
                   f"set fs_limits.{key} to a number above 0")


def _pool_problems(at: str, pool: PoolConfig, probe: Probe,
                   default_model: ModelCheck) -> Iterator[tuple[str, str, str]]:
    if not pool.models:
        yield (f"{at}.models", "the pool serves no model",
               "add a [[pools.models]] table with an id")
    for key in ("replicas", "slots_per_replica"):
        if getattr(pool, key) < 1:
            yield (f"{at}.{key}", f"{getattr(pool, key)} is below 1",
                   f"set {key} to 1 or more")
    if pool.queue_capacity < 0:
        yield (f"{at}.queue_capacity", f"{pool.queue_capacity} is negative",
               "set queue_capacity to 0 (no waiting) or more")
    ids: set[str] = set()
    for j, model in enumerate(pool.models):
        key = f"{at}.models[{j}]"
        if model.id in ids:
            yield (f"{key}.id", f"{model.id!r} appears twice in the pool",
                   "give every model of a pool its own id")
        ids.add(model.id)
        if model.context_tokens < 1:
            yield (f"{key}.context_tokens", f"{model.context_tokens} is below 1",
                   "set context_tokens to the model's context window")
        if model.path is not None and not pathlib.Path(model.path).is_file():
            yield (f"{key}.path", f"no file at {model.path}",
                   "give the path of the model's weights file")
        elif model.path is None and (missing := default_model(pool, model)) is not None:
            yield (f"{key}.path", f"not set, and the default model is missing ({missing})",
                   "run tools/bootstrap.sh, or set path to the weights file")
    if pool.engine == "openai_http":
        yield from _remote_problems(at, pool, probe)


def _remote_problems(at: str, pool: PoolConfig, probe: Probe) -> Iterator[tuple[str, str, str]]:
    if len(pool.urls) < pool.replicas:
        yield (f"{at}.urls", f"{len(pool.urls)} urls for {pool.replicas} replicas",
               "list one url per replica, or lower replicas")
    for k, url in enumerate(pool.urls[:max(pool.replicas, 0)]):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            yield (f"{at}.urls[{k}]", f"{url!r} is not an http(s) URL",
                   "write it as http://host:port")
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not probe(parts.hostname, port):
            yield (f"{at}.urls[{k}]", f"nothing answers at {parts.hostname}:{port}",
                   "start the engine there, or correct the url")


def _tool_problems(at: str, tool: ToolExecutorConfig) -> Iterator[tuple[str, str, str]]:
    if tool.kind != "argv" or not tool.argv:
        return
    program = tool.argv[0]
    if tool.cwd is not None and not pathlib.Path(tool.cwd).is_dir():
        yield f"{at}.cwd", f"no directory at {tool.cwd}", "give an existing directory"
        return
    if "/" in program:
        where = pathlib.Path(tool.cwd or ".") / program
        if not (where.is_file() and os.access(where, os.X_OK)):
            yield (f"{at}.argv[0]", f"no executable file at {program}",
                   "install the program or correct argv[0]")
    elif shutil.which(program, path=tool.env.get("PATH") or os.environ.get("PATH")) is None:
        yield (f"{at}.argv[0]", f"{program!r} is not found on PATH",
               "install the program or give its absolute path in argv[0]")
