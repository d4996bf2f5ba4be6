"""Structured output of LLM Steps: ``response_contract`` and ``llm_plan`` tool menus.

Two output shapes turn the decoded text of an LLM Step into its recorded output:

* :class:`ContractShape` (``llm_call`` with a ``response_contract``, NERVE-4013): the
  text must be one JSON document valid against the contract; its parsed value is
  recorded as ``end.output.value``.
* :class:`PlanShape` (``llm_plan``, NERVE-4010, NERVE-4011): the text must be the
  intents envelope ``{"intents": [{"tool", "args"}, ...]}``; each intent becomes one
  ``tool_suggest`` frame, valid only when the tool is on the menu and its arguments
  validate against the tool's JSON Schema (2020-12).

A text that is not JSON, is cut off, or misses the shape raises ``CONTRACT_VIOLATION``;
the Step ends there with no hidden retry. Both shapes are pure functions of the text,
so ``strict_replay`` rebuilds the same frames from the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from contracts.errors import ContractViolation, InvalidParams, InvalidToolArgs
from contracts.events import ToolSuggestData
from contracts.flows import ToolSchema
from orchestrator_core.schema_guard import check_schema, violations

__all__ = [
    "ContractShape",
    "OutputShape",
    "PlanShape",
    "check_contract_schema",
    "intents_schema",
    "menu_text",
    "tool_menu",
]

_MAX_ERRORS = 20


def check_contract_schema(schema: dict[str, Any]) -> None:
    """Refuse a ``response_contract`` that is not a valid JSON Schema (2020-12), or that
    breaks the limits of POLICY-3020 (patterns on RE2).

    Raises:
        InvalidParams: ``data.field`` is ``input.response_contract``, ``data.path`` the
            JSON pointer inside it.
    """
    check_schema(schema, field="input.response_contract", label="response_contract")


def tool_menu(declared: Sequence[ToolSchema], names: Sequence[str] | None) -> list[ToolSchema]:
    """The menu of an ``llm_plan``: the named Flow tools in the given order, or all.

    Raises:
        InvalidParams: a name is not declared by the Flow, is repeated, or the Flow
            declares no tools.
    """
    by_name = {t.name: t for t in declared}
    if names is None:
        if not declared:
            raise InvalidParams("llm_plan needs a tool menu, and the flow declares no tools")
        return list(declared)
    if len(set(names)) != len(names):
        raise InvalidParams("the tool menu names a tool twice", data={"tools": list(names)})
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InvalidParams(f"the flow declares no tool named {missing[0]!r}",
                            data={"tools": missing, "declared": sorted(by_name)})
    return [by_name[n] for n in names]


_menu_json = msgspec.json.Encoder(order="sorted")


def menu_text(menu: Sequence[ToolSchema], max_intents: int) -> str:
    """The system message that shows the menu to the model (deterministic text).

    Each tool is one line: its name, its description and its argument schema as compact
    JSON with sorted keys (msgspec's encoding, not RFC 8785: the prompt text of plans
    recorded before RFC 8785 (NERVE-4009) must not change, or their replays would diverge).
    """
    lines = [
        "You can call the tools listed below. Reply with JSON only, exactly in the form "
        '{"intents": [{"tool": "<tool name>", "args": {<arguments>}}]}, '
        f"with 1 to {max_intents} intents, in the order they should run.",
        "Tools:",
    ]
    for tool in menu:
        desc = f": {tool.description}" if tool.description else ""
        lines.append(f"- {tool.name}{desc} Arguments (JSON Schema): "
                     f"{_menu_json.encode(tool.parameters).decode()}")
    return "\n".join(lines)


def intents_schema(menu: Sequence[ToolSchema], max_intents: int, *,
                   strict: bool = True) -> dict[str, Any]:
    """The JSON Schema of the intents envelope.

    ``strict`` makes each intent one of the menu's tools with that tool's argument
    schema (what constrained decoding uses); otherwise ``args`` is any object and
    ``tool`` any menu name (for engines whose grammar compiler cannot express a tool's
    schema; the arguments are still validated afterwards).
    """
    names = [t.name for t in menu]
    if strict:
        item: dict[str, Any] = {"anyOf": [
            {"type": "object", "additionalProperties": False, "required": ["tool", "args"],
             "properties": {"tool": {"const": t.name}, "args": t.parameters}}
            for t in menu]}
    else:
        item = {"type": "object", "additionalProperties": False, "required": ["tool", "args"],
                "properties": {"tool": {"enum": names}, "args": {"type": "object"}}}
    return {"type": "object", "additionalProperties": False, "required": ["intents"],
            "properties": {"intents": {"type": "array", "minItems": 1,
                                       "maxItems": max_intents, "items": item}}}


def _errors(schema: dict[str, Any], value: Any) -> list[dict[str, str]]:
    return violations(schema, value)[:_MAX_ERRORS]


def _parse(text: str, finish_reason: str, schema: dict[str, Any], what: str) -> Any:
    """The one JSON document ``text`` holds, valid against ``schema`` (on RE2).

    Raises:
        ContractViolation: ``not_json``, ``truncated`` or ``schema`` (with ``errors``).
    """
    try:
        value = msgspec.json.decode(text.strip().encode())
    except msgspec.DecodeError as exc:
        reason = "truncated" if finish_reason == "length" else "not_json"
        raise ContractViolation(
            "the model's output is not a complete JSON document"
            + (" (it reached max_tokens)" if reason == "truncated" else ""),
            data={"reason": reason, "errors": [{"path": "$", "message": str(exc)}],
                  "finish_reason": finish_reason}) from exc
    errors = _errors(schema, value)
    if errors:
        raise ContractViolation(f"the model's output is not {what}",
                                data={"reason": "schema", "errors": errors,
                                      "finish_reason": finish_reason})
    return value


class OutputShape:
    """Turns the decoded text into ``(end.output, tool_suggest frames)``.

    The base shape is free text: ``{"text": text}`` and no frames.
    """

    def finish(self, text: str, finish_reason: str) -> \
            tuple[dict[str, Any], list[ToolSuggestData]]:
        """Raises ContractViolation when the text misses the shape."""
        return {"text": text}, []


class ContractShape(OutputShape):
    """``llm_call`` with a ``response_contract`` (NERVE-4013).

    Args:
        schema: the contract, already checked by :func:`check_contract_schema`.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema

    def finish(self, text: str, finish_reason: str) -> \
            tuple[dict[str, Any], list[ToolSuggestData]]:
        """``{"text", "value"}``; raises ContractViolation (``not_json``, ``truncated``
        or ``schema`` with ``data.errors``)."""
        value = _parse(text, finish_reason, self.schema, "valid for the response_contract")
        return {"text": text, "value": value}, []


class PlanShape(OutputShape):
    """``llm_plan``: the intents envelope, one ``tool_suggest`` per intent (NERVE-4010).

    Args:
        menu: the Step's tool menu.
        max_intents: the most intents accepted.
    """

    def __init__(self, menu: Sequence[ToolSchema], max_intents: int) -> None:
        self.tools = list(menu)
        self.max_intents = max_intents
        self.menu = {t.name: t.parameters for t in menu}
        self.envelope: dict[str, Any] = {
            "type": "object", "required": ["intents"], "properties": {
                "intents": {"type": "array", "minItems": 1, "maxItems": max_intents,
                            "items": {"type": "object", "required": ["tool", "args"],
                                      "properties": {"tool": {"type": "string"}}}}}}

    def suggestion(self, i: int, tool: str, args: Any) -> ToolSuggestData:
        """Judge one intent: valid, or invalid with a typed INVALID_TOOL_ARGS envelope."""
        schema = self.menu.get(tool)
        if schema is None:
            err = InvalidToolArgs(f"tool {tool!r} is not on this step's menu",
                                  data={"tool": tool, "reason": "not_on_menu",
                                        "menu": sorted(self.menu)})
            return ToolSuggestData(i=i, tool=tool, args=args, valid=False,
                                   error=err.envelope())
        errors = _errors(schema, args)
        if errors:
            err = InvalidToolArgs(f"arguments of tool {tool} do not match its schema",
                                  data={"tool": tool, "reason": "schema", "errors": errors})
            return ToolSuggestData(i=i, tool=tool, args=args, valid=False,
                                   error=err.envelope())
        return ToolSuggestData(i=i, tool=tool, args=args, valid=True)

    def finish(self, text: str, finish_reason: str) -> \
            tuple[dict[str, Any], list[ToolSuggestData]]:
        """``{"text", "intents": [{tool, args, valid}], "valid": <count>}`` and one
        frame per intent; raises ContractViolation when the envelope is missing."""
        doc = _parse(text, finish_reason, self.envelope,
                     'an intents envelope {"intents": [{"tool", "args"}, ...]}')
        frames = [self.suggestion(i, item["tool"], item["args"])
                  for i, item in enumerate(doc["intents"])]
        intents = [{"tool": f.tool, "args": f.args, "valid": f.valid} for f in frames]
        return ({"text": text, "intents": intents, "valid": sum(f.valid for f in frames)},
                frames)
