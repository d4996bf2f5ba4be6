"""Bounded JMESPath for ``gate_eval``: checked at admission, evaluated on a work budget
(NERVE-4006, NERVE-4007).

A gate expression comes from a client, so everything it can make the server do is
bounded:

* Admission (:func:`compile_gate`): at most :data:`MAX_EXPRESSION_CHARS` characters (the
  contract's limit), parsed inside a ``RecursionError`` guard, and its syntax tree at most
  :data:`MAX_EXPRESSION_DEPTH` nodes deep (walked without recursion). The evaluator
  recurses once per level of that tree, so this also bounds its stack.
* Evaluation (:func:`evaluate_gate`): every step is paid for from one budget of work
  units, ``max_gate_work``, charged before the work is done. One unit per node visited
  (a projection visits its right side once per element); one per element or character
  a step materialises (flatten, slice, the list, object or string a function returns,
  the strings ``join`` copies); one per byte of the encoding of a list or object that is
  compared (any comparator), searched (``contains``) or serialised (``to_string``), and
  one per 64 characters of such a string. Projections over a structure of shared
  references (``[@,@] | [@,@] | ... | [*][*]...``) therefore stop after about
  ``max_gate_work`` steps instead of doubling their work per stage, and no step can
  allocate more than the budget that is left.
* The value (:func:`evaluate_gate`'s result) must fit ``max_recorded_value_bytes``
  (POLICY-3030), measured by :func:`~orchestrator_core.bounds.json_size` without
  encoding it.

Running out of the budget, a ``RecursionError`` or a ``MemoryError`` ends the Step with
an ``OUTPUT_TOO_LARGE`` error frame; a JMESPath runtime error (a function given the wrong
type) with ``INVALID_PARAMS``. Evaluation is pure and runs in a worker thread, so even a
budget's worth of work never stalls the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import functions, visitor
from jmespath.exceptions import JMESPathError, JMESPathTypeError

from contracts.errors import InvalidParams, OutputTooLarge
from orchestrator_core.bounds import ValueTooDeep, json_size, oversize

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode as Node

__all__ = [
    "MAX_EXPRESSION_CHARS",
    "MAX_EXPRESSION_DEPTH",
    "GateExpression",
    "compile_gate",
    "evaluate_gate",
]

MAX_EXPRESSION_CHARS = 4096
"""Longest gate expression, in characters (also the contract's ``max_length``)."""

MAX_EXPRESSION_DEPTH = 64
"""Deepest syntax tree of a gate expression, in nodes (``a.b.c`` is 3 deep)."""

_FIELD = "input.expression"

_FREE = frozenset({"length", "type", "not_null", "to_array", "abs", "ceil", "floor"})
"""Functions whose cost does not depend on the size of their arguments."""
_DEEP = frozenset({"to_string", "contains"})
"""Functions that walk their arguments all the way down: charged their encoded size."""


class GateExpression:
    """A gate expression that passed admission: its text and its syntax tree."""

    __slots__ = ("ast", "text")

    def __init__(self, text: str, ast: Node) -> None:
        self.text = text
        self.ast = ast


def _refuse(message: str, **data: Any) -> InvalidParams:
    return InvalidParams(message, data={"field": _FIELD, **data})


def _depth(ast: Node) -> int:
    """Depth of a JMESPath syntax tree, walked with an explicit stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(ast, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.get("children", ())
                     if isinstance(child, dict))
    return deepest


def compile_gate(expression: str) -> GateExpression:
    """Check and parse a gate expression at admission (NERVE-4006, NERVE-4007).

    Args:
        expression: JMESPath text from the Step input.

    Returns:
        The parsed expression.

    Raises:
        InvalidParams: ``data.field`` is ``input.expression``: the expression is longer
            than :data:`MAX_EXPRESSION_CHARS`, does not parse, nests too deeply for the
            parser, or its tree is deeper than :data:`MAX_EXPRESSION_DEPTH`.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _refuse(f"gate expression is longer than {MAX_EXPRESSION_CHARS} characters",
                      limit_chars=MAX_EXPRESSION_CHARS)
    try:
        ast = jmespath.compile(expression).parsed
    except RecursionError:
        raise _refuse("gate expression nests too deeply to parse",
                      limit_depth=MAX_EXPRESSION_DEPTH) from None
    except JMESPathError as exc:
        raise _refuse(f"invalid JMESPath expression: {exc}", expression=expression) from exc
    if _depth(ast) > MAX_EXPRESSION_DEPTH:
        raise _refuse(f"gate expression nests deeper than {MAX_EXPRESSION_DEPTH} levels",
                      limit_depth=MAX_EXPRESSION_DEPTH)
    return GateExpression(expression, ast)


class _OverBudget(Exception):
    """The evaluation spent its whole work budget."""


class _Budget:
    """Work units left for one evaluation."""

    __slots__ = ("left",)

    def __init__(self, units: int) -> None:
        self.left = units

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise _OverBudget

    def spend_size(self, value: Any) -> None:
        """Charge for walking ``value``: its encoded size for a list or object (measured
        no further than the budget left), one unit per 64 characters of a string."""
        if isinstance(value, str):
            self.spend(len(value) >> 6)
        elif isinstance(value, list | dict):
            try:
                self.spend(json_size(value, max(self.left, 0)))
            except ValueTooDeep:
                raise RecursionError("value nests too deeply to compare") from None


def _orderable(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _shallow(value: Any) -> int:
    return len(value) if isinstance(value, list | dict | str) else 0


class _Functions(functions.Functions):
    """The JMESPath built-in functions, each charged to the budget before it runs."""

    def __init__(self, budget: _Budget) -> None:
        self.budget = budget

    def call_function(self, function_name: str, resolved_args: Iterable[Any]) -> Any:
        resolved_args = list(resolved_args)
        budget = self.budget
        if function_name in _DEEP:
            for arg in resolved_args:
                budget.spend_size(arg)
        elif function_name == "join" and len(resolved_args) == 2 and \
                isinstance(resolved_args[1], list):
            sep, parts = resolved_args
            budget.spend(len(parts))
            budget.spend(sum(len(p) for p in parts if isinstance(p, str))
                         + _shallow(sep) * len(parts))
        elif function_name not in _FREE:
            budget.spend(sum(_shallow(arg) for arg in resolved_args))
        result = super().call_function(function_name, resolved_args)
        if not any(result is arg for arg in resolved_args):
            budget.spend(_shallow(result))
        return result


class _Interpreter(visitor.TreeInterpreter):
    """JMESPath's tree interpreter, paying for each step from a :class:`_Budget`."""

    def __init__(self, budget: _Budget) -> None:
        super().__init__(visitor.Options(custom_functions=_Functions(budget)))
        self.budget = budget

    def visit(self, node: Node, *args: Any, **kwargs: Any) -> Any:
        self.budget.spend(1)
        return super().visit(node, *args, **kwargs)

    def visit_comparator(self, node: Node, value: Any) -> Any:
        left = self.visit(node["children"][0], value)
        right = self.visit(node["children"][1], value)
        self.budget.spend_size(left)
        self.budget.spend_size(right)
        func = self.COMPARATOR_FUNC[node["value"]]
        if node["value"] in ("eq", "ne"):
            return func(left, right)
        if not (_orderable(left) and _orderable(right)):
            return None  # ordering compares numbers and strings only, as in JMESPath
        return func(left, right)

    def visit_flatten(self, node: Node, value: Any) -> Any:
        base = self.visit(node["children"][0], value)
        if not isinstance(base, list):
            return None
        self.budget.spend(len(base) + sum(len(e) for e in base if isinstance(e, list)))
        merged: list[Any] = []
        for element in base:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    def visit_slice(self, node: Node, value: Any) -> Any:
        if isinstance(value, list):
            self.budget.spend(len(value))
        return super().visit_slice(node, value)


def _type_error(exc: JMESPathTypeError) -> str:
    # str(exc) would render the offending value, which may be a structure of shared
    # references that prints to gigabytes.
    return (f"in function {exc.function_name}(), invalid type: expected one of "
            f"{exc.expected_types}, received {exc.actual_type!r}")


def evaluate_gate(gate: GateExpression, facts: list[dict[str, Any]], *, max_work: int,
                  max_value_bytes: int) -> tuple[bool, Any]:
    """Evaluate a gate over ``{"facts": [...], "by_type": {type: [data...]}}`` (NERVE-4006).

    Pure and thread-safe: the server runs it in a worker thread.

    Args:
        gate: the expression, from :func:`compile_gate`.
        facts: the Run's Facts as JSON objects, in ``seq`` order.
        max_work: the work budget in units (see the module docstring) (NERVE-4007).
        max_value_bytes: the largest value that may be recorded, in bytes (POLICY-3030).

    Returns:
        ``(passed, value)``: JMESPath truthiness of the value, and the value.

    Raises:
        InvalidParams: a JMESPath runtime error (e.g. a function given the wrong type).
        OutputTooLarge: ``data.field`` ``input.expression`` when the budget ran out
            (``reason`` ``work``), the evaluation recursed too deeply (``depth``) or ran
            out of memory (``memory``); ``output.value`` when the value is over
            ``max_value_bytes`` (``size``) or nests too deeply (``depth``).
    """
    by_type: dict[str, list[Any]] = {}
    for f in facts:
        by_type.setdefault(f["type"], []).append(f["data"])
    budget = _Budget(max_work)
    try:
        value = _Interpreter(budget).visit(gate.ast, {"facts": facts, "by_type": by_type})
    except _OverBudget:
        raise OutputTooLarge(f"gate evaluation needs more than {max_work} work units",
                             data={"field": _FIELD, "reason": "work",
                                   "limit_work": max_work}) from None
    except RecursionError:
        raise OutputTooLarge("gate evaluation nests too deeply",
                             data={"field": _FIELD, "reason": "depth"}) from None
    except MemoryError:
        raise OutputTooLarge("gate evaluation ran out of memory",
                             data={"field": _FIELD, "reason": "memory"}) from None
    except JMESPathTypeError as exc:
        raise InvalidParams(f"gate expression failed: {_type_error(exc)}",
                            data={"field": _FIELD, "expression": gate.text}) from None
    except JMESPathError as exc:
        raise InvalidParams(f"gate expression failed: {exc}",
                            data={"field": _FIELD, "expression": gate.text}) from exc
    refused = oversize(value, max_value_bytes)
    if refused is not None:
        raise OutputTooLarge(
            f"the gate's value is larger than the {max_value_bytes}-byte limit on recorded "
            "values" if refused["reason"] == "size" else "the gate's value nests too deeply",
            data={"field": "output.value", **refused})
    return value not in (None, False, "", [], {}), value
