"""Safe JSON Schema 2020-12 for request-supplied schemas (POLICY-3020, POLICY-3021).

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

:func:`validator` builds, and caches, a Draft 2020-12 validator whose regular expressions
run on RE2 (linear in the text; ``pattern``, ``patternProperties``,
``additionalProperties``, ``unevaluatedProperties`` and the metaschema's ``regex`` format)
and whose ``uniqueItems``/``unevaluated*`` are linear. :func:`violations` lists a value's
errors sorted by path. Nothing request-supplied ever reaches Python ``re``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import msgspec
import re2
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema._utils import find_evaluated_item_indexes_by_schema
from jsonschema.exceptions import ValidationError

from contracts.errors import InvalidParams
from orchestrator_core.canonical import canonical_json

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
RE2_MAX_MEM = 1 << 20
"""RE2 memory bound per compiled pattern (bytes); a larger program does not compile."""
_CACHE_SIZE = 64
_MAX_MESSAGE = 1000
_DEEP = "the value is nested too deeply to validate against this schema"

# Keywords whose subschemas apply to the same instance (a cycle through them loops) ...
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_MANY = ("allOf", "anyOf", "oneOf")
_IN_PLACE_MAP = ("dependentSchemas",)
# ... and keywords whose subschemas apply to a part of it (recursion ends with the value).
_STEP_ONE = ("items", "contains", "additionalProperties", "propertyNames",
             "unevaluatedItems", "unevaluatedProperties", "contentSchema")
_STEP_MANY = ("prefixItems",)
_STEP_MAP = ("properties", "patternProperties", "$defs", "definitions")


def _options() -> Any:
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    options.log_errors = False
    options.never_capture = True
    return options


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> Any:
    """The RE2 program of ``pattern``; raises ``ValueError`` with RE2's reason.

    google-re2 has no fallback to Python ``re``: unsupported syntax raises ``re2.error``.
    """
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "not supported"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from exc
    except UnicodeEncodeError as exc:
        raise ValueError("the pattern is not valid UTF-8") from exc


def _search(pattern: str, text: str) -> bool | None:
    """JSON Schema's search semantics on RE2; None when RE2 cannot compile ``pattern``."""
    try:
        rx = _compile(pattern)
    except ValueError:
        return None
    return rx.search(text.encode("utf-8", "surrogatepass")) is not None


def _pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "…"


# -- keywords on RE2 and linear-time -------------------------------------------------


def _pattern(validator: Any, patrn: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{repr(instance)[:200]} does not match {patrn!r}")


def _pattern_properties(validator: Any, pp: Any, instance: Any,
                        schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in pp.items():
        for k, v in instance.items():
            if _search(patrn, k):
                yield from validator.descend(v, subschema, path=k, schema_path=patrn)


def _extras_msg(extras: list[Any]) -> tuple[str, str]:
    return ", ".join(repr(e) for e in extras), "was" if len(extras) == 1 else "were"


def _additional(instance: Mapping[str, Any], schema: Any) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [k for k in instance
            if k not in properties and not any(_search(p, k) for p in patterns)]


def _additional_properties(validator: Any, ap: Any, instance: Any,
                           schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    extras = set(_additional(instance, schema))
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(e) for e in sorted(extras))
            patterns = ", ".join(repr(p) for p in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            joined, verb = _extras_msg(sorted(extras, key=str))
            yield ValidationError(f"Additional properties are not allowed ({joined} {verb} "
                                  "unexpected)")


def _evaluated_keys(validator: Any, instance: Any, schema: Any) -> set[str]:
    """jsonschema's ``find_evaluated_property_keys_by_schema`` on RE2, as a set."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for ref_keyword in ("$ref", "$dynamicRef"):
        ref = schema.get(ref_keyword)
        if ref is not None:
            resolved = validator._resolver.lookup(ref)
            keys |= _evaluated_keys(validator.evolve(schema=resolved.contents,
                                                     _resolver=resolved.resolver),
                                    instance, resolved.contents)
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (sub := schema.get(keyword)) is not None:
            keys |= {k for k, v in instance.items()
                     if next(validator.descend(v, sub), None) is None}
    for patrn in schema.get("patternProperties", {}):
        keys |= {k for k in instance if _search(patrn, k)}
    for prop, sub in schema.get("dependentSchemas", {}).items():
        if prop in instance:
            keys |= _evaluated_keys(validator, instance, sub)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(keyword, []):
            if next(validator.descend(instance, sub), None) is None:
                keys |= _evaluated_keys(validator, instance, sub)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(validator: Any, up: Any, instance: Any,
                            schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    bad = [k for k in instance if k not in evaluated
           and next(validator.descend(instance[k], up, path=k, schema_path=k), None)
           is not None]
    if bad:
        if up is False:
            joined, verb = _extras_msg(sorted(bad, key=str))
            yield ValidationError(f"Unevaluated properties are not allowed ({joined} {verb} "
                                  "unexpected)")
        else:
            joined, verb = _extras_msg(bad)
            yield ValidationError(f"Unevaluated properties are not valid under the given "
                                  f"schema ({joined} {verb} unevaluated and invalid)")


def _unevaluated_items(validator: Any, ui: Any, instance: Any,
                       schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "array"):
        return
    evaluated = set(find_evaluated_item_indexes_by_schema(validator, instance, schema))
    extra = [item for i, item in enumerate(instance) if i not in evaluated]
    if extra:
        joined, verb = _extras_msg(extra)
        yield ValidationError(f"Unevaluated items are not allowed ({joined} {verb} unexpected)")


def _canon(value: Any) -> Any:
    """A hashable form equal exactly when JSON Schema calls two values equal: ``1 == 1.0``,
    ``true != 1``, object key order irrelevant."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, list | tuple):
        return ("a", tuple(_canon(v) for v in value))
    if isinstance(value, dict):
        return ("o", frozenset((k, _canon(v)) for k, v in value.items()))
    return ("z", None) if value is None else ("?", repr(value))


def _unique_items(validator: Any, ui: Any, instance: Any, schema: Any) -> Iterator[Any]:
    if ui and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = _canon(item)
            if key in seen:
                yield ValidationError(f"{repr(instance)[:200]} has non-unique elements")
                return
            seen.add(key)


def _is_regex(instance: object) -> bool:
    if isinstance(instance, str):
        _compile(instance)
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("regex", raises=ValueError)(_is_regex)

_Validator: Any = validators.extend(Draft202012Validator, validators={
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
    "unevaluatedItems": _unevaluated_items,
    "uniqueItems": _unique_items,
}, format_checker=_FORMATS)
_META: Any = _Validator(Draft202012Validator.META_SCHEMA, format_checker=_FORMATS)


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
            stack.extend((v, depth + 1, path + _pointer([k])) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, depth + 1, path + _pointer([i])) for i, v in enumerate(value))


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
                    yield in_place, sub, path + _pointer([kw, k])


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
                    _check_pattern(key, at + _pointer(["patternProperties", key]))
            for in_place, sub, sub_at in _children(node, at):
                if in_place and isinstance(sub, dict):
                    self.edges[id(node)].append(id(sub))
                stack.append((sub, sub_at, res))

    def resolve(self, ref: Any, at: str, resource: Any) -> Any:
        """The subschema a local reference names; refuses any other reference."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _Refusal(at, f"only local references (starting with '#') are allowed, "
                               f"not {ref!r}"[:_MAX_MESSAGE])
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
        _compile(pattern)
    except ValueError as exc:
        raise _Refusal(path, f"pattern {pattern[:200]!r} is not supported by RE2, the "
                             f"linear-time engine: {exc}", pattern=pattern[:200]) from exc


def _meta_validate(schema: Any) -> None:
    try:
        error = next(_META.iter_errors(schema), None)
    except RecursionError as exc:
        raise _Refusal("", "the schema is nested too deeply to check") from exc
    if error is not None:
        raise _Refusal(_pointer(error.absolute_path), _short(error.message))


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


_cache: collections.OrderedDict[bytes, Any] = collections.OrderedDict()


def validator(schema: Any) -> Any:
    """A Draft 2020-12 validator of ``schema`` on RE2, cached (LRU of 64, keyed by the
    schema's canonical JSON), so a schema is compiled once however often it validates.

    Returns:
        A ``jsonschema`` validator instance (``iter_errors``, ``is_valid``).
    """
    key = canonical_json(schema)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    built = _Validator(msgspec.json.decode(key))
    _cache[key] = built
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return built


def violations(schema: Any, value: Any) -> list[dict[str, str]]:
    """Every way ``value`` violates ``schema``, sorted by path (POLICY-3020).

    Returns:
        ``[{"path": "$.a[0]", "message": ...}, ...]`` (messages at most 1,000 chars);
        empty when the value is valid. A value too deeply nested to evaluate is one
        violation at ``$``, never a crash.
    """
    try:
        errors = sorted(validator(schema).iter_errors(value), key=lambda e: e.json_path)
        return [{"path": e.json_path, "message": _short(e.message)} for e in errors]
    except RecursionError:
        return [{"path": "$", "message": _DEEP}]
