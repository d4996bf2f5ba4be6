"""Flow wire types: a content-addressed program (NERVE-4000, NERVE-4001)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from contracts.limits import Labels, Name

__all__ = ["Flow", "FlowCreate", "FlowCreated", "ToolSchema"]


class ToolSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A tool the Flow may call.

    Attributes:
        name: tool name, unique within the Flow.
        parameters: JSON Schema (2020-12) of the arguments.
        description: free text shown to the model in a tool menu.
        executor: name of an operator-configured executor (never a command).
        output_schema: optional JSON Schema checked on the tool's result.
    """

    name: Name
    parameters: dict[str, Any]
    description: str = ""
    executor: Name | None = None
    output_schema: dict[str, Any] | None = None


class FlowCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/flows``.

    The Flow's hash covers ``ast_ir``, ``tools`` and ``config`` in canonical JSON;
    ``labels`` are metadata and do not change the identity.
    """

    ast_ir: Any
    tools: Annotated[list[ToolSchema], msgspec.Meta(max_length=256)] = msgspec.field(
        default_factory=list)
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    labels: Labels = msgspec.field(default_factory=dict)


class FlowCreated(msgspec.Struct):
    """Answer of ``POST /v1/flows``: 201 with ``created=True``, 200 when it already existed."""

    flow_id: str
    hash: str
    created: bool


class Flow(msgspec.Struct):
    """A stored Flow. Flows are immutable: a change makes a new Flow."""

    flow_id: str
    hash: str
    ast_ir: Any
    tools: list[ToolSchema]
    config: dict[str, Any]
    labels: dict[str, str]
    created_at: str
