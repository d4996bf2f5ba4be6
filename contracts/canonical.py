"""Canonical JSON: RFC 8785, the JSON Canonicalization Scheme (NERVE-4001, NERVE-4009).

Every content address the server hands out (a Flow's hash and id, a Step's input hash,
a Run's policy hash, provenance hashes) is blake3 over these bytes, so a client in any
language with a JCS library reproduces them:

* UTF-8, no insignificant whitespace, object keys sorted by their UTF-16 code units;
* numbers as ECMAScript writes a double: ``1.0`` is ``1``, ``-0.0`` is ``0``, ``1e21`` is
  ``1e+21``, ``1e-7`` is ``1e-7``; NaN and Infinity are refused;
* strings escape ``"``, ``\\`` and the controls below U+0020 only.

One extension: an integer outside the I-JSON range (``|n| > 2**53 - 1``, e.g. a 63-bit
seed) is written with all its decimal digits, where RFC 8785 leaves it undefined.

msgspec writes everything but floats and the order of non-ASCII keys exactly as RFC 8785
does, so the encoder is msgspec's sorted encoding with each float replaced by its RFC 8785
text (from ``rfc8785``) and each object with a non-ASCII key sorted by UTF-16 code units;
both are property-tested against the ``rfc8785`` package.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
import rfc8785

from contracts.errors import InvalidParams

__all__ = ["canonical_json"]

_encoder = msgspec.json.Encoder(order="sorted")


def _number(value: float, path: str) -> msgspec.Raw:
    """A float's RFC 8785 text, as raw JSON. ``repr`` without an exponent is already that
    text once a trailing ``.0`` is dropped (``rfc8785`` builds its output from the same
    digits); the other floats go through ``rfc8785``."""
    if not math.isfinite(value):
        raise InvalidParams(f"non-finite number at {path}", data={"path": path})
    if value == 0:  # -0.0 too
        return msgspec.Raw(b"0")
    text = repr(value)
    if "e" in text:
        return msgspec.Raw(rfc8785.dumps(value))
    return msgspec.Raw((text[:-2] if text.endswith(".0") else text).encode())


def _object(value: dict[str, Any], path: str) -> msgspec.Raw:
    """An object with a non-ASCII key, its keys sorted by UTF-16 code units."""
    parts = []
    for key in sorted(value, key=lambda k: k.encode("utf-16be", "surrogatepass")):
        item, _ = _prepare(value[key], f"{path}.{key}")
        parts.append(_encoder.encode(key) + b":" + _encoder.encode(item))
    return msgspec.Raw(b"{" + b",".join(parts) + b"}")


def _prepare(value: Any, path: str) -> tuple[Any, bool]:
    """``value`` (builtins) with what msgspec's sorted encoding would write unlike RFC 8785
    replaced by raw RFC 8785 text: floats, and objects with non-ASCII keys (msgspec sorts
    keys by code point). Containers are copied only when something inside changed.

    Returns:
        ``(value, changed)``.
    """
    if isinstance(value, float):
        return _number(value, path), True
    if isinstance(value, dict):
        if not all(k.isascii() for k in value):
            return _object(value, path), True
        out: dict[str, Any] | None = None
        for k, v in value.items():
            item, changed = _prepare(v, f"{path}.{k}")
            if changed:
                out = dict(value) if out is None else out
                out[k] = item
        return (value, False) if out is None else (out, True)
    if isinstance(value, list):
        items: list[Any] | None = None
        for i, v in enumerate(value):
            item, changed = _prepare(v, f"{path}[{i}]")
            if changed:
                items = list(value) if items is None else items
                items[i] = item
        return (value, False) if items is None else (items, True)
    return value, False


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` (builtins or msgspec Structs) as RFC 8785 canonical JSON.

    Args:
        value: any JSON-able value; Structs, enums and tuples are converted with
            ``msgspec.to_builtins`` first.

    Returns:
        The canonical UTF-8 bytes (NERVE-4009).

    Raises:
        InvalidParams: the value holds NaN or +/-Infinity (``data.path`` locates it, e.g.
            ``$.x[1]``), or a string that is not valid Unicode.
    """
    prepared, _ = _prepare(msgspec.to_builtins(value, str_keys=True), "$")
    try:
        return _encoder.encode(prepared)
    except (UnicodeEncodeError, msgspec.EncodeError) as exc:
        raise InvalidParams(f"no canonical JSON form: {exc}", data={"path": "$"}) from exc
