"""Deterministic ``client_token`` derivation for the Python client (NERVE-4071).

A Step submitted without a ``client_token`` gets ``cli:<hash>:<n>``: ``<hash>`` is the hex
blake3 of the canonical submission (RFC 8785, :mod:`contracts.canonical`) without its
``client_token``, and ``<n>`` counts, from 0, the earlier submissions of that same body to
the same Run by this client. The same interpreter code therefore names the same Steps
when it runs again, against a replay Run of its recording, as the OpenAI facade's
``oai:<call key>:<n>`` does (OAI-6004). Imports nothing of the server.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import blake3

from contracts.canonical import canonical_json

__all__ = ["DERIVED_PREFIX", "StepTokens"]

DERIVED_PREFIX = "cli:"
"""Every derived client_token starts with this (``cli:<hash hex>:<n>``)."""


class StepTokens:
    """The n-th occurrence of each submission body in each Run, counted by one client.

    :meth:`claim` never awaits, so concurrent identical submissions get distinct
    occurrences in the order they are claimed. At most ``capacity`` (Run, body) pairs are
    remembered; the oldest is forgotten first.

    Args:
        capacity: pairs remembered.
    """

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._next: OrderedDict[tuple[str, str], int] = OrderedDict()

    def claim(self, run_id: str, body: dict[str, Any]) -> str:
        """The client_token of the next occurrence of ``body`` in ``run_id`` (NERVE-4071).

        Args:
            run_id: the Run the Step is submitted to.
            body: the submission without ``client_token`` (plain JSON values).

        Returns:
            ``cli:<64 hex>:<n>``, n from 0 (at most 70 + digits of n characters).

        Raises:
            contracts.errors.InvalidParams: ``body`` holds a non-finite number.
        """
        key = blake3.blake3(canonical_json(body)).hexdigest()
        slot = (run_id, key)
        n = self._next.pop(slot, 0)
        self._next[slot] = n + 1
        if len(self._next) > self.capacity:
            self._next.popitem(last=False)
        return f"{DERIVED_PREFIX}{key}:{n}"
