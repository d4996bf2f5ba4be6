"""Field limits shared by the request types (oversized input is INVALID_PARAMS)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Id", "Labels", "Name", "Seed", "Token"]

_NO_NUL = r"^[^\x00]*$"
"""No U+0000: a key stored as text must mean the same on every store (PostgreSQL text
cannot hold U+0000, PG-9044); one character class, so matching is linear in the text."""

Token = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=_NO_NUL)]
"""An idempotency key or an opaque id supplied by a client (1..256 chars, no U+0000)."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_NO_NUL)]
"""A server id or a model id (1..128 chars, no U+0000)."""

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                   pattern=r"^[A-Za-z0-9_.:-]+$")]
"""A tool or executor name."""

Labels = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)],
         Annotated[str, msgspec.Meta(max_length=1024, pattern=_NO_NUL)]],
    msgspec.Meta(max_length=64),
]
"""At most 64 labels, keys up to 128 and values up to 1024 chars, no U+0000."""

Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A sampling seed: 0..2**63-1. Negative seeds are refused (llama.cpp reads -1 as
"random", which no recording could reproduce)."""
