"""Content addressing: blake3 over canonical JSON (DESIGN.md §3, NERVE-4001, NERVE-4012).

Canonical JSON is RFC 8785 (:func:`contracts.canonical.canonical_json`, NERVE-4009). A
content hash is ``b3:`` + hex(blake3(canonical bytes)).

Stores written before schema v8 hashed msgspec's sorted encoding instead (``1.0`` stays
``1.0``, ``1e21`` is ``1e21``). Their recordings keep those hashes byte for byte, so a
comparison with a recorded hash goes through :func:`b3_as_recorded`, which accepts
either form (NERVE-4048).
"""

from __future__ import annotations

import secrets
from typing import Any

import blake3
import msgspec

from contracts.canonical import canonical_json

__all__ = ["b3", "b3_as_recorded", "b3_bytes", "b3_legacy", "canonical_json", "derive_seed",
           "new_id", "new_ordered_id"]

_legacy_encoder = msgspec.json.Encoder(order="sorted")


def b3_bytes(data: bytes) -> str:
    """``b3:`` + hex blake3 digest (256 bits) of raw bytes."""
    return "b3:" + blake3.blake3(data).hexdigest()


def b3(value: Any) -> str:
    """Content hash of ``value``'s canonical JSON: ``b3:<64 hex>`` (NERVE-4009).

    Raises:
        InvalidParams: the value has no canonical form (NaN, Infinity).
    """
    return b3_bytes(canonical_json(value))


def b3_legacy(value: Any) -> str:
    """The hash a store before schema v8 gave ``value``: blake3 over msgspec's sorted
    encoding. Only for recognising recorded hashes and migrating (NERVE-4048)."""
    return b3_bytes(_legacy_encoder.encode(msgspec.to_builtins(value)))


def b3_as_recorded(value: Any, current: str, recorded: str | None) -> str:
    """``value``'s hash in the form a recording used (NERVE-4048).

    Args:
        value: what ``current`` hashes.
        current: ``b3(value)``, the RFC 8785 hash.
        recorded: the hash the recording holds for the same role, or None.

    Returns:
        ``recorded`` when it is ``value``'s pre-v8 hash, else ``current``; so comparing
        the result with ``recorded`` tells whether the value is the recorded one, in
        whichever canonical form it was recorded.
    """
    if recorded is None or recorded == current or not recorded.startswith("b3:"):
        return current
    return recorded if b3_legacy(value) == recorded else current


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


def new_ordered_id(prefix: str, now_s: float) -> str:
    """An identifier that grows with time: ``<prefix>_`` + 8 hex digits of the Unix
    second ``now_s`` (modulo 2**32) + 16 random hex digits (64 bits), 24 in all like
    :func:`new_id`.

    Rows keyed by such ids (a Step's row and its frames) are appended next to the
    latest ones instead of at random places in an index, so a write touches the same
    few pages whatever the store holds (NERVE-4042).

    Args:
        prefix: e.g. ``stp``.
        now_s: wall-clock time, epoch seconds (the injected clock's).
    """
    return f"{prefix}_{int(now_s) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


def flow_address(content: Any, tenant: str, default_tenant: str = "default") -> tuple[str, str]:
    """A Flow's ``(hash, flow_id)`` from its content ``{ast_ir, tools, config}``
    (NERVE-4001). The default tenant's flow_id is ``flw_`` + the first 32 hex digits of
    the hash; another tenant's folds the tenant in, so ids never reveal another tenant's
    flows."""
    return _address(b3(content), tenant, default_tenant)


def legacy_flow_address(content: Any, tenant: str,
                        default_tenant: str = "default") -> tuple[str, str]:
    """The ``(hash, flow_id)`` a store before schema v8 gave this content (NERVE-4048)."""
    return _address(b3_legacy(content), tenant, default_tenant)


def _address(flow_hash: str, tenant: str, default_tenant: str) -> tuple[str, str]:
    digest = flow_hash if tenant == default_tenant else b3({"tenant": tenant,
                                                             "hash": flow_hash})
    return flow_hash, "flw_" + digest[3:35]
