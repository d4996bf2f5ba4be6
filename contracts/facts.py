"""Fact wire types: append-only, typed, schema-validated records of a Run (NERVE-4004)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from contracts.limits import Id, Name

__all__ = ["BUILTIN_FACT_SCHEMA", "Fact", "FactCreate"]

BUILTIN_FACT_SCHEMA = "urn:orchestratord:schema:any-object"
"""A schema every server knows: any JSON object."""


class FactCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/facts``.

    ``schema_uri`` must resolve to a registered JSON Schema: one the Flow declares in
    ``config.fact_schemas`` (``{uri: schema}``) or :data:`BUILTIN_FACT_SCHEMA`. ``data``
    is validated against it; an invalid fact is 400 and nothing is stored. ``step_id``
    names the Step that produced it, if any.
    """

    type: Name
    schema_uri: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    data: Any
    step_id: Id | None = None


class Fact(msgspec.Struct):
    """A stored Fact. ``seq`` is its position in the Run's single total order (0, 1, …)."""

    fact_id: str
    run_id: str
    seq: int
    type: str
    schema_uri: str
    data: Any
    emitted_by_step: str | None
    ts: str
