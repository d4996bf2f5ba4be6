"""Field limits shared by the request types (oversized input is INVALID_PARAMS)."""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["Id", "Labels", "Name", "Seed", "Token"]

Token = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""An idempotency key or an opaque id supplied by a client (1..256 chars)."""

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
"""A server id or a model id (1..128 chars)."""

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128,
                                   pattern=r"^[A-Za-z0-9_.:-]+$")]
"""A tool or executor name."""

Labels = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=128)],
         Annotated[str, msgspec.Meta(max_length=1024)]],
    msgspec.Meta(max_length=64),
]
"""At most 64 labels, keys up to 128 and values up to 1024 chars."""

Seed = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A sampling seed: 0..2**63-1. Negative seeds are refused (llama.cpp reads -1 as
"random", which no recording could reproduce)."""
