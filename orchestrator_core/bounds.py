"""Size bounds of recorded values, measured without building them (POLICY-3030).

Every value the server records (a tool's output, an ``fs_op`` result, a gate's value, a
checkpoint snapshot) must fit ``max_recorded_value_bytes``. The value is measured before
it is encoded, because encoding is what explodes: a value may hold the same list many
times over (a gate expression such as ``[@,@] | [@,@] | ...`` doubles a reference per
stage), so that a structure of a few hundred objects serialises to gigabytes.

:func:`json_size` walks the value iteratively (no recursion, so depth cannot crash it),
counts a shared reference every time it appears, as an encoder would write it, and stops
as soon as the running total passes the limit. Its cost is therefore bounded by the
limit, not by the value: every node adds at least one byte.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["MAX_VALUE_DEPTH", "ValueTooDeep", "json_size", "oversize"]

MAX_VALUE_DEPTH = 256
"""Deepest nesting of lists and objects a recorded value may have (an encoder recurses
once per level; deeper values are refused with reason ``depth``)."""

_enc = msgspec.json.Encoder()


class ValueTooDeep(ValueError):
    """The value nests lists and objects deeper than the allowed depth."""


def _str_size(text: str, room: int) -> int:
    """Encoded size of a JSON string, or ``room + 1`` when it cannot fit in ``room``."""
    if len(text) + 2 > room:  # UTF-8 never takes fewer bytes than code points
        return room + 1
    return len(_enc.encode(text))


def _int_size(number: int) -> int:
    if number.bit_length() <= 256:
        return len(str(number))
    return int(number.bit_length() * 0.30103) + 2  # digits, without building the string


def json_size(value: Any, limit: int, max_depth: int = MAX_VALUE_DEPTH) -> int:
    """The size in bytes of ``value`` as compact JSON, measured up to ``limit``.

    Shared references count each time they appear (as an encoder writes them). The walk
    stops as soon as the running total exceeds ``limit``, so its cost is O(limit).

    Args:
        value: JSON-like data (dict, list, tuple, str, int, float, bool, None; anything
            else is measured through ``msgspec.to_builtins``).
        limit: bytes; the walk stops once the total exceeds it.
        max_depth: deepest nesting of lists and objects accepted.

    Returns:
        The exact encoded size when it is at most ``limit``; otherwise some number
        greater than ``limit`` (the running total when the walk stopped).

    Raises:
        ValueTooDeep: the value nests deeper than ``max_depth``.
    """
    total = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            total += _str_size(item, limit - total)
        elif kind is dict or kind is list or kind is tuple:
            if depth >= max_depth:
                raise ValueTooDeep(f"nested deeper than {max_depth}")
            total += 2 + max(len(item) - 1, 0)  # brackets and commas
            if kind is dict:
                total += len(item)  # colons
                for key, sub in item.items():
                    stack.append((sub, depth + 1))
                    total += _str_size(key if type(key) is str else str(key), limit - total)
                    if total > limit:
                        return total
            else:
                stack.extend((sub, depth + 1) for sub in item)
        elif kind is bool:
            total += 4 if item else 5
        elif item is None:
            total += 4
        elif kind is int:
            total += _int_size(item)
        elif kind is float:
            total += len(_enc.encode(item))
        else:
            stack.append((msgspec.to_builtins(item), depth))
        if total > limit:
            return total
    return total


def oversize(value: Any, limit: int) -> dict[str, Any] | None:
    """Why ``value`` may not be recorded under ``limit`` bytes, or None when it may.

    Returns:
        None, or the refusal's ``data`` without its field: ``{"reason": "size",
        "limit_bytes": limit}`` or ``{"reason": "depth", "limit_depth": MAX_VALUE_DEPTH}``
        (POLICY-3030).
    """
    try:
        if json_size(value, limit) <= limit:
            return None
    except ValueTooDeep:
        return {"reason": "depth", "limit_depth": MAX_VALUE_DEPTH}
    return {"reason": "size", "limit_bytes": limit}
