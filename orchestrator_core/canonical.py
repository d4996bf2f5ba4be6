"""Canonical JSON and blake3 content addressing (DESIGN.md §3, NERVE-4001, NERVE-4012).

Canonical JSON is UTF-8, object keys sorted, no insignificant whitespace; NaN and
Infinity are refused. A content hash is ``b3:`` + hex(blake3(canonical bytes)).
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import blake3
import msgspec

from contracts.errors import InvalidParams

__all__ = ["b3", "b3_bytes", "canonical_json", "derive_seed", "new_id"]

_encoder = msgspec.json.Encoder(order="sorted")


def _check_finite(value: Any, path: str = "$") -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParams(f"non-finite number at {path}", data={"path": path})
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` (builtins or msgspec Structs) as canonical JSON bytes.

    Raises:
        InvalidParams: the value holds NaN or +/-Infinity.
    """
    builtins = msgspec.to_builtins(value)
    _check_finite(builtins)
    return _encoder.encode(builtins)


def b3_bytes(data: bytes) -> str:
    """``b3:`` + hex blake3 digest (256 bits) of raw bytes."""
    return "b3:" + blake3.blake3(data).hexdigest()


def b3(value: Any) -> str:
    """Content hash of ``value``'s canonical JSON: ``b3:<64 hex>``."""
    return b3_bytes(canonical_json(value))


def derive_seed(run_seed: int, client_token: str) -> int:
    """Per-Step seed from the Run seed and the client_token (DESIGN.md §2).

    A retried interpreter that reuses its client_token gets the same seed.

    Returns:
        An integer in ``[0, 2**31)``, safe for every engine's seed field.
    """
    digest = blake3.blake3(f"{run_seed}\x00{client_token}".encode()).digest(length=8)
    return int.from_bytes(digest, "big") % (2**31)


def new_id(prefix: str) -> str:
    """A random identifier ``<prefix>_<24 hex>`` (96 bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"
