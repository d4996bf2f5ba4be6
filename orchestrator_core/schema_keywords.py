"""JSON Schema 2020-12 validation on RE2, linear-time and with a work budget (POLICY-3020).

:func:`validator` builds, and caches, a Draft 2020-12 validator whose regular expressions
run on RE2 (linear in the text; ``pattern``, ``patternProperties``,
``additionalProperties``, ``unevaluatedProperties`` and the metaschema's ``regex`` format)
and whose ``uniqueItems``/``unevaluated*`` are linear. :func:`violations` lists a value's
errors sorted by path, within a budget of :data:`MAX_EVALUATIONS` keyword evaluations per
validation: a schema that fans out over a deeply nested value, or a very large value,
ends as one violation instead of holding the event loop. The budget counts evaluations,
not time, so the outcome is deterministic and a replay reaches the same verdict.
Nothing request-supplied ever reaches Python ``re``. Which schemas are accepted at all is
:mod:`orchestrator_core.schema_guard`'s job.
"""

from __future__ import annotations

import collections
import contextvars
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import msgspec
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema._utils import find_evaluated_item_indexes_by_schema
from jsonschema.exceptions import ValidationError

from orchestrator_core.canonical import canonical_json
from orchestrator_core.linear_regex import compile_linear

__all__ = [
    "MAX_EVALUATIONS",
    "META_VALIDATOR",
    "RE2_MAX_MEM",
    "compile_re2",
    "json_pointer",
    "short_message",
    "validator",
    "violations",
]

RE2_MAX_MEM = 1 << 20
"""RE2 memory bound per compiled pattern (bytes); a larger program does not compile."""
MAX_EVALUATIONS = 30_000
"""Most keyword evaluations one validation may make (about 2 µs each: ~60 ms at most)."""
_CACHE_SIZE = 64
_MAX_MESSAGE = 1000
_DEEP = "the value is nested too deeply to validate against this schema"
_TOO_COSTLY = (f"validating the value against this schema takes more than {MAX_EVALUATIONS} "
               "keyword evaluations")
_UNEVALUABLE = "a number in the value cannot be evaluated against this schema"
_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("schema_budget")


class _OverBudget(Exception):
    """The validation spent its keyword evaluations."""


@lru_cache(maxsize=1024)
def compile_re2(pattern: str) -> Any:
    """The RE2 program of ``pattern`` (cached); raises ``ValueError`` with RE2's reason.

    google-re2 has no fallback to Python ``re``: unsupported syntax raises.
    """
    return compile_linear(pattern, RE2_MAX_MEM)


def _search(pattern: str, text: str) -> bool | None:
    """JSON Schema's search semantics on RE2; None when RE2 cannot compile ``pattern``."""
    try:
        rx = compile_re2(pattern)
    except ValueError:
        return None
    return rx.search(text.encode("utf-8", "surrogatepass")) is not None


def json_pointer(parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def short_message(text: str) -> str:
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
        compile_re2(instance)
    return True


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("regex", raises=ValueError)(_is_regex)


def _counted(keyword: Callable[..., Any]) -> Callable[..., Any]:
    """``keyword``, charging one evaluation to the running validation's budget (none
    outside :func:`violations`, e.g. meta-validation, which has its own size limits)."""

    def charged(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        left = _budget.get(None)
        if left is not None:
            left[0] -= 1
            if left[0] < 0:
                raise _OverBudget
        return keyword(validator, value, instance, schema)

    return charged


_RE2_KEYWORDS = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
    "unevaluatedItems": _unevaluated_items,
    "uniqueItems": _unique_items,
}
_Validator: Any = validators.extend(Draft202012Validator, validators={
    name: _counted(fn) for name, fn in {**Draft202012Validator.VALIDATORS,
                                        **_RE2_KEYWORDS}.items()
}, format_checker=_FORMATS)
META_VALIDATOR: Any = _Validator(Draft202012Validator.META_SCHEMA, format_checker=_FORMATS)
"""The Draft 2020-12 metaschema's validator, its ``regex`` format on RE2."""


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
        empty when the value is valid. A value too deeply nested to evaluate, one that
        needs more than :data:`MAX_EVALUATIONS` keyword evaluations, or a number the
        schema cannot be evaluated on is one violation at ``$``, never a crash.
    """
    token = _budget.set([MAX_EVALUATIONS])
    try:
        errors = sorted(validator(schema).iter_errors(value), key=lambda e: e.json_path)
        return [{"path": e.json_path, "message": short_message(e.message)} for e in errors]
    except RecursionError:
        return [{"path": "$", "message": _DEEP}]
    except _OverBudget:
        return [{"path": "$", "message": _TOO_COSTLY}]
    except (OverflowError, ValueError, ArithmeticError):  # multipleOf 1e-300 on 1e300 ...
        return [{"path": "$", "message": _UNEVALUABLE}]
    finally:
        _budget.reset(token)
