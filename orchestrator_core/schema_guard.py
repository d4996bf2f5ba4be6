"""Which request-supplied JSON Schemas (2020-12) the server accepts (POLICY-3020).

Tool ``parameters``/``output_schema``, a Flow's ``config.fact_schemas`` and an
``llm_call``'s ``response_contract`` come from requests and are evaluated on the event
loop. :func:`check_schema` refuses, when the Flow or Step is created, every schema that
could hold the loop: more than :data:`MAX_DEPTH` nesting levels or :data:`MAX_NODES`
values, a ``pattern`` or ``patternProperties`` key that RE2 cannot compile (backreferences,
lookaround), a ``$ref``/``$dynamicRef`` that is not local or does not resolve, a cycle of
references that consumes no input (``{"$ref": "#"}``), or a fan-out through in-place
applicators that makes one instance location evaluate more than :data:`MAX_EXPANSION`
subschemas. Recursion through ``properties``, ``items`` and the other keywords that step
into the instance is legitimate (a tree) and accepted.

Validation itself (RE2 keywords, the per-validation work budget) lives in
:mod:`orchestrator_core.schema_keywords`; :func:`validator` and :func:`violations` are
re-exported here so call sites import one module.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from contracts.errors import InvalidParams
from orchestrator_core.schema_keywords import (
    META_VALIDATOR,
    RE2_MAX_MEM,
    compile_re2,
    json_pointer,
    short_message,
    validator,
    violations,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPANSION",
    "MAX_NODES",
    "RE2_MAX_MEM",
    "check_schema",
    "validator",
    "violations",
]

MAX_DEPTH = 64
"""Most JSON nesting levels in a schema document (32 levels of ``properties``)."""
MAX_NODES = 10_000
"""Most JSON values (objects, arrays and scalars) in a schema document."""
MAX_EXPANSION = 10_000
"""Most subschemas that in-place applicators and references evaluate at one location."""

# Keywords whose subschemas apply to the same instance (a cycle through them loops) ...
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP = ("dependentSchemas",)
# ... and keywords whose subschemas apply to a part of it (recursion ends with the value).
_STEP_ONE = ("items", "contains", "additionalProperties", "propertyNames",
             "unevaluatedItems", "unevaluatedProperties", "contentSchema")
_STEP_MANY = ("prefixItems",)
_STEP_MAP = ("properties", "patternProperties", "$defs", "definitions")

# -- check_schema ----------------------------------------------------------------------


class _Refusal(Exception):
    def __init__(self, path: str, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.path, self.reason, self.extra = path, reason, extra


def _check_size(schema: Any) -> None:
    """Depth and node count, without recursion."""
    stack: list[tuple[Any, int, str]] = [(schema, 1, "")]
    nodes = 0
    while stack:
        value, depth, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise _Refusal(path, f"the schema holds more than {MAX_NODES} values",
                           limit=MAX_NODES)
        if depth > MAX_DEPTH:
            raise _Refusal(path, f"the schema nests more than {MAX_DEPTH} levels deep",
                           limit=MAX_DEPTH)
        if isinstance(value, dict):
            stack.extend((v, depth + 1, path + json_pointer([k])) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, path + json_pointer([i])) for i, v in enumerate(value))


def _children(node: dict[str, Any], path: str) -> Iterator[tuple[bool, Any, str]]:
    """``(in_place, subschema, path)`` for each subschema written inside ``node``."""
    for in_place, one, many, mapping in ((True, _IN_PLACE_ONE, _IN_PLACE_MANY, _IN_PLACE_MAP),
                                         (False, _STEP_ONE, _STEP_MANY, _STEP_MAP)):
        for kw in one:
            if kw in node:
                yield in_place, node[kw], f"{path}/{kw}"
        for kw in many:
            if isinstance(node.get(kw), list):
                for i, sub in enumerate(node[kw]):
                    yield in_place, sub, f"{path}/{kw}/{i}"
        for kw in mapping:
            if isinstance(node.get(kw), dict):
                for k, sub in node[kw].items():
                    yield in_place, sub, path + json_pointer([kw, k])


class _Graph:
    """The schema's subschemas, its references resolved, and the in-place edges."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.path: dict[int, str] = {}
        self.resource: dict[int, Any] = {}
        self.nodes: dict[int, dict[str, Any]] = {}
        self.edges: dict[int, list[int]] = collections.defaultdict(list)
        self.anchors: dict[tuple[int, str], Any] = {}
        self.dynamic: dict[str, list[Any]] = collections.defaultdict(list)
        self.order: list[int] = []

    def walk(self, start: Any, path: str, resource: Any) -> None:
        """Record every subschema under ``start``: paths, resources, anchors, patterns."""
        stack = [(start, path, resource)]
        while stack:
            node, at, res = stack.pop()
            if not isinstance(node, dict) or id(node) in self.nodes:
                continue
            if isinstance(node.get("$id"), str) and node is not self.root:
                res = node
            self.nodes[id(node)], self.path[id(node)], self.resource[id(node)] = node, at, res
            self.order.append(id(node))
            for kw in ("$anchor", "$dynamicAnchor"):
                if isinstance(node.get(kw), str):
                    self.anchors.setdefault((id(res), node[kw]), node)
            if isinstance(node.get("$dynamicAnchor"), str):
                self.dynamic[node["$dynamicAnchor"]].append(node)
            if isinstance(node.get("pattern"), str):
                _check_pattern(node["pattern"], f"{at}/pattern")
            if isinstance(node.get("patternProperties"), dict):
                for key in node["patternProperties"]:
                    _check_pattern(key, at + json_pointer(["patternProperties", key]))
            for in_place, sub, sub_at in _children(node, at):
                if in_place and isinstance(sub, dict):
                    self.edges[id(node)].append(id(sub))
                stack.append((sub, sub_at, res))

    def resolve(self, ref: Any, at: str, resource: Any) -> Any:
        """The subschema a local reference names; refuses any other reference."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Refusal(at, f"only local references (starting with '#') are allowed, "
                               f"not {ref!r}"[:1000])
        fragment = unquote(ref[1:])
        if fragment and not fragment.startswith("/"):
            target = self.anchors.get((id(resource), fragment))
        else:
            target = resource
            for token in fragment.split("/")[1:] if fragment else []:
                token = token.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and token in target:
                    target = target[token]
                elif isinstance(target, list) and token.isdigit() and int(token) < len(target):
                    target = target[int(token)]
                else:
                    target = None
                    break
        if not isinstance(target, dict | bool):
            raise _Refusal(at, f"the reference {ref!r} names no subschema of this schema")
        return target

    def link(self) -> None:
        """Resolve every ``$ref``/``$dynamicRef`` into an in-place edge."""
        i = 0
        while i < len(self.order):
            nid = self.order[i]
            node, at, res = self.nodes[nid], self.path[nid], self.resource[nid]
            i += 1
            for kw in ("$ref", "$dynamicRef"):
                if kw not in node:
                    continue
                target = self.resolve(node[kw], f"{at}/{kw}", res)
                targets = [target]
                fragment = unquote(node[kw][1:])
                if kw == "$dynamicRef" and fragment and not fragment.startswith("/"):
                    targets += self.dynamic.get(fragment, [])
                for t in targets:
                    if isinstance(t, dict):
                        if id(t) not in self.nodes:
                            self.walk(t, at + "/" + kw, res)
                        self.edges[nid].append(id(t))

    def check_in_place(self) -> None:
        """Refuse a cycle of in-place edges, and a fan-out past :data:`MAX_EXPANSION`."""
        indegree = dict.fromkeys(self.nodes, 0)
        for nid in self.nodes:
            for t in self.edges.get(nid, ()):
                indegree[t] += 1
        ready = [n for n, d in indegree.items() if d == 0]
        done: list[int] = []
        while ready:
            n = ready.pop()
            done.append(n)
            for t in self.edges.get(n, ()):
                indegree[t] -= 1
                if indegree[t] == 0:
                    ready.append(t)
        if len(done) < len(self.nodes):
            left = {n for n, d in indegree.items() if d > 0}
            preds = {t: n for n in left for t in self.edges.get(n, ()) if t in left}
            n = next(n for n in self.order if n in left)
            seen: set[int] = set()
            while n not in seen:  # every node left has a predecessor left: walk back
                seen.add(n)
                n = preds[n]
            raise _Refusal(self.path[n], "references form a cycle that consumes no input, "
                                         "so evaluating it would never end")
        size: dict[int, int] = {}
        for n in reversed(done):
            size[n] = min(MAX_EXPANSION + 1,
                          1 + sum(size[t] for t in self.edges.get(n, ())))
            if size[n] > MAX_EXPANSION:
                raise _Refusal(self.path[n], f"evaluating this subschema at one location "
                                             f"would evaluate more than {MAX_EXPANSION} "
                                             "subschemas", limit=MAX_EXPANSION)


def _check_pattern(pattern: str, path: str) -> None:
    try:
        compile_re2(pattern)
    except ValueError as exc:
        raise _Refusal(path, f"pattern {pattern[:200]!r} is not supported by RE2, the "
                             f"linear-time engine: {exc}", pattern=pattern[:200]) from exc


def _meta_validate(schema: Any) -> None:
    try:
        error = next(META_VALIDATOR.iter_errors(schema), None)
    except RecursionError as exc:
        raise _Refusal("", "the schema is nested too deeply to check") from exc
    if error is not None:
        raise _Refusal(json_pointer(error.absolute_path), short_message(error.message))


def check_schema(schema: Any, *, field: str, label: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
    """Refuse a request-supplied JSON Schema that is invalid or could hold the event loop.

    Draft 2020-12 meta-validation (its ``regex`` format on RE2) plus the limits of
    POLICY-3020: at most :data:`MAX_DEPTH` levels and :data:`MAX_NODES` values, every
    ``pattern`` and ``patternProperties`` key compiles on RE2, references are local and
    resolve, no reference cycle consumes no input, and at most :data:`MAX_EXPANSION`
    subschemas apply at one instance location.

    Args:
        schema: the decoded JSON Schema (an object or a boolean).
        field: the request field holding it, e.g. ``tools[0].parameters``.
        label: how the message names the schema (default ``field``).
        extra: more ``data`` keys for the refusal (e.g. the tool's name).

    Raises:
        InvalidParams: ``message`` ``"<label> is not a valid JSON Schema: <reason>"``,
            ``data`` ``{"field": field, "path": <JSON pointer inside the schema>, ...}``.
    """
    try:
        _check_size(schema)
        graph = _Graph(schema)
        graph.walk(schema, "", schema)
        graph.link()
        graph.check_in_place()
        _meta_validate(schema)
    except _Refusal as refusal:
        raise InvalidParams(f"{label or field} is not a valid JSON Schema: {refusal.reason}",
                            data={**(extra or {}), "field": field, "path": refusal.path,
                                  **refusal.extra}) from None
