"""What ``GET /v1/capabilities`` says about the operator's tool executors (NERVE-4076)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from contracts.pools import ToolExecutorInfo
from worker_adapters.base import _PLACEHOLDER, ToolExecutorConfig

__all__ = ["Catalogued", "args_schema", "describe_executors"]

_SCALAR = {"type": ["string", "number", "boolean"]}
"""What an ``argv`` placeholder accepts (a string, a finite number or a boolean)."""


def args_schema(config: ToolExecutorConfig) -> dict[str, Any]:
    """The JSON Schema of the arguments object an executor takes, from its config alone.

    Args:
        config: the executor's configuration.

    Returns:
        For ``argv``: an object whose ``{name}`` placeholders are required scalars (the
        whole object also goes to stdin); for ``http``: any object.
    """
    if config.kind == "http" or not config.argv:
        return {"type": "object"}
    names = sorted({m.group(1) for e in config.argv if (m := _PLACEHOLDER.fullmatch(e))})
    if not names:
        return {"type": "object"}
    return {"type": "object", "required": names,
            "properties": {name: dict(_SCALAR) for name in names}}


def describe_executors(configs: Mapping[str, ToolExecutorConfig],
                       schemas: Mapping[str, dict[str, Any]]) -> list[ToolExecutorInfo]:
    """Every executor by name, sorted, with its argument schema and per-call limits.

    Args:
        configs: the executors' configurations by name.
        schemas: known argument schemas by executor name (the built-in tools'); others
            are derived by :func:`args_schema`.

    Returns:
        One :class:`~contracts.pools.ToolExecutorInfo` per executor.
    """
    return [ToolExecutorInfo(name=name, kind=config.kind,
                             args_schema=schemas.get(name) or args_schema(config),
                             timeout_ms=config.timeout_ms,
                             max_output_bytes=config.max_output_bytes)
            for name, config in sorted(configs.items())]


class Catalogued:
    """Mixed into a tool registry: :meth:`catalogue` answers the list it was given."""

    _catalogue: list[ToolExecutorInfo]

    def catalogue(self) -> list[ToolExecutorInfo]:
        """Every executor, sorted by name, with its argument schema and limits."""
        return list(self._catalogue)
