"""Request-supplied schemas and patterns on RE2, behind explicit limits (POLICY-3020,
POLICY-3021)."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.errors import InvalidParams
from contracts.runs import Policy
from orchestrator_core.policy import redact, validate_policy
from orchestrator_core.schema_guard import check_schema, violations

CYCLE = "references form a cycle that consumes no input, so evaluating it would never end"
TREE = {"type": "object", "required": ["value"], "properties": {
    "value": {"type": "integer"},
    "children": {"type": "array", "items": {"$ref": "#"}}}}


def _refusal(schema: Any) -> tuple[str, dict[str, Any] | None]:
    with pytest.raises(InvalidParams) as info:
        check_schema(schema, field="tools[0].parameters")
    return info.value.message, info.value.data


class TestCheckSchemaLimits:
    """Size, depth and metaschema (POLICY-3020)."""

    def test_a_plain_schema_is_accepted(self) -> None:
        """A valid schema with a catastrophic-on-backtracking pattern is accepted: RE2
        expresses it."""
        check_schema({"type": "object", "properties": {"s": {"pattern": "^(a+)+$"}}},
                     field="tools[0].parameters")

    def test_too_deep_a_schema_is_refused_naming_field_and_path(self) -> None:
        """65 JSON levels are refused with the pointer of the first level past the limit."""
        schema: dict[str, Any] = {}
        for _ in range(100):
            schema = {"not": schema}
        message, data = _refusal(schema)
        assert message == ("tools[0].parameters is not a valid JSON Schema: the schema "
                           "nests more than 64 levels deep")
        assert data == {"field": "tools[0].parameters", "path": "/not" * 64, "limit": 64}

    def test_too_many_values_are_refused(self) -> None:
        """A schema holding more than 10,000 JSON values is refused."""
        message, data = _refusal({"enum": list(range(20_000))})
        assert message == ("tools[0].parameters is not a valid JSON Schema: the schema "
                           "holds more than 10000 values")
        assert data == {"field": "tools[0].parameters", "path": "/enum/10001",
                        "limit": 10_000}

    def test_a_metaschema_violation_names_its_path(self) -> None:
        """Draft 2020-12 meta-validation still applies, with the pointer of the bad
        keyword."""
        message, data = _refusal({"properties": {"a": {"type": "no-such-type"}}})
        assert message == ("tools[0].parameters is not a valid JSON Schema: 'no-such-type' "
                           "is not valid under any of the given schemas")
        assert data == {"field": "tools[0].parameters", "path": "/properties/a/type"}

    def test_label_and_extra_shape_the_refusal(self) -> None:
        """Call sites keep their message prefix and add their own data keys."""
        with pytest.raises(InvalidParams) as info:
            check_schema({"type": 5}, field="config.fact_schemas.urn:x", label="fact schema "
                         "urn:x", extra={"uri": "urn:x"})
        assert info.value.message == ("fact schema urn:x is not a valid JSON Schema: 5 is "
                                      "not valid under any of the given schemas")
        assert info.value.data == {"uri": "urn:x", "field": "config.fact_schemas.urn:x",
                                   "path": "/type"}


class TestCheckSchemaPatterns:
    """Patterns must compile on RE2, which never falls back to Python ``re``."""

    @pytest.mark.parametrize(("pattern", "reason"), [
        ("(a)\\1", "invalid escape sequence: \\1"),
        ("(?=a)", "invalid perl operator: (?="),
        ("(?<!a)b", "invalid perl operator: (?<!"),
    ])
    def test_a_pattern_re2_cannot_express_is_refused(self, pattern: str,
                                                     reason: str) -> None:
        """Backreferences and lookaround are refused, with the pattern's pointer."""
        message, data = _refusal({"properties": {"a": {"type": "string",
                                                       "pattern": pattern}}})
        assert message == (f"tools[0].parameters is not a valid JSON Schema: pattern "
                           f"{pattern!r} is not supported by RE2, the linear-time engine: "
                           f"{reason}")
        assert data == {"field": "tools[0].parameters", "path": "/properties/a/pattern",
                        "pattern": pattern}

    def test_a_pattern_properties_key_re2_cannot_express_is_refused(self) -> None:
        """``patternProperties`` keys are patterns too."""
        _message, data = _refusal({"patternProperties": {"x/(?=y)": {}}})
        assert data == {"field": "tools[0].parameters",
                        "path": "/patternProperties/x~1(?=y)", "pattern": "x/(?=y)"}

    def test_a_pattern_under_defs_is_checked(self) -> None:
        """A pattern reachable only through ``$defs`` is still compiled on RE2."""
        _message, data = _refusal({"$defs": {"d": {"pattern": "(?!x)"}}})
        assert data == {"field": "tools[0].parameters", "path": "/$defs/d/pattern",
                        "pattern": "(?!x)"}


class TestCheckSchemaReferences:
    """Local references only, and no cycle that consumes no input."""

    def test_a_remote_reference_is_refused(self) -> None:
        """Nothing is ever retrieved: a reference must start with ``#``."""
        message, data = _refusal({"$ref": "https://example.com/schema"})
        assert message == ("tools[0].parameters is not a valid JSON Schema: only local "
                           "references (starting with '#') are allowed, not "
                           "'https://example.com/schema'")
        assert data == {"field": "tools[0].parameters", "path": "/$ref"}

    def test_a_dangling_reference_is_refused(self) -> None:
        """A local reference must name a subschema of the document."""
        _message, data = _refusal({"$defs": {}, "$ref": "#/$defs/missing"})
        assert data == {"field": "tools[0].parameters", "path": "/$ref"}

    def test_a_self_reference_is_refused(self) -> None:
        """``{"$ref": "#"}`` would recurse forever on any value."""
        assert _refusal({"$ref": "#"}) == (
            f"tools[0].parameters is not a valid JSON Schema: {CYCLE}",
            {"field": "tools[0].parameters", "path": ""})

    def test_a_cycle_through_all_of_is_refused(self) -> None:
        """``a -> allOf -> b -> a`` consumes no input."""
        schema = {"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]},
                            "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}
        assert _refusal(schema)[1] == {"field": "tools[0].parameters", "path": "/$defs/b"}

    def test_a_cycle_through_if_then_is_refused(self) -> None:
        """Conditional applicators are in-place too."""
        schema = {"$defs": {"c": {"if": {"type": "object"}, "then": {"$ref": "#/$defs/c"}}},
                  "$ref": "#/$defs/c"}
        assert _refusal(schema)[0] == f"tools[0].parameters is not a valid JSON Schema: {CYCLE}"

    def test_a_dynamic_reference_to_itself_is_refused(self) -> None:
        """``$dynamicRef`` joins the cycle analysis."""
        assert _refusal({"$dynamicAnchor": "m", "$dynamicRef": "#m"})[0] == (
            f"tools[0].parameters is not a valid JSON Schema: {CYCLE}")

    def test_a_recursive_tree_is_accepted_and_validates(self) -> None:
        """Recursion through ``properties``/``items`` consumes input and is legitimate."""
        check_schema(TREE, field="tools[0].parameters")
        good = {"value": 1, "children": [{"value": 2, "children": []}, {"value": 3}]}
        assert violations(TREE, good) == []
        assert violations(TREE, {"value": 1, "children": [{"value": "x"}]}) == [
            {"path": "$.children[0].value", "message": "'x' is not of type 'integer'"}]

    def test_an_anchor_reference_is_accepted(self) -> None:
        """``#name`` resolves through ``$anchor``."""
        check_schema({"$defs": {"n": {"$anchor": "node", "properties": {
            "next": {"$ref": "#node"}}}}, "$ref": "#node"}, field="tools[0].parameters")

    def test_an_exponential_fan_out_is_refused(self) -> None:
        """``anyOf`` of references to ``anyOf``s would evaluate 2**29 subschemas."""
        defs: dict[str, Any] = {"a0": {"type": "string"}}
        for i in range(1, 30):
            defs[f"a{i}"] = {"anyOf": [{"$ref": f"#/$defs/a{i - 1}"},
                                       {"$ref": f"#/$defs/a{i - 1}"}]}
        message, data = _refusal({"$defs": defs, "$ref": "#/$defs/a29"})
        assert message == ("tools[0].parameters is not a valid JSON Schema: evaluating "
                           "this subschema at one location would evaluate more than 10000 "
                           "subschemas")
        assert data == {"field": "tools[0].parameters", "path": "/$defs/a12",
                        "limit": 10_000}


class TestViolations:
    """Validation on RE2 with linear-time keywords."""

    def test_a_catastrophic_pattern_against_a_hostile_string_completes(self) -> None:
        """``^(a+)+$`` against ``"a"*10000 + "!"`` is one linear RE2 search (Python ``re``
        would not finish)."""
        assert violations({"type": "string", "pattern": "^(a+)+$"}, "a" * 10_000 + "!") == [
            {"path": "$", "message": "'" + "a" * 199 + " does not match '^(a+)+$'"}]

    def test_pattern_is_an_unanchored_search(self) -> None:
        """JSON Schema's ``pattern`` matches anywhere in the string."""
        assert violations({"pattern": "b+"}, "abba") == []
        assert violations({"pattern": "^b"}, "abba") == [
            {"path": "$", "message": "'abba' does not match '^b'"}]

    def test_the_digit_class_is_ascii_as_in_ecma_262(self) -> None:
        """RE2's ``\\d`` is ASCII like JSON Schema's ECMA-262 dialect (Python ``re``'s
        matched any Unicode digit)."""
        assert violations({"pattern": "^\\d$"}, "\u0663") == [
            {"path": "$", "message": "'\u0663' does not match '^\\\\d$'"}]
        assert violations({"pattern": "^\\d$"}, "3") == []

    def test_pattern_properties_and_additional_properties_use_re2(self) -> None:
        """A key matching a patternProperties pattern is not additional."""
        schema = {"patternProperties": {"^x(a|aa)+$": {"type": "integer"}},
                  "additionalProperties": False}
        assert violations(schema, {"xaaa": 1, "xa": "no", "y": 1}) == [
            {"path": "$", "message": "'y' does not match any of the regexes: '^x(a|aa)+$'"},
            {"path": "$.xa", "message": "'no' is not of type 'integer'"}]

    def test_unevaluated_properties_see_pattern_properties(self) -> None:
        """``unevaluatedProperties`` counts keys evaluated by RE2 patterns."""
        schema = {"patternProperties": {"^x": {}}, "unevaluatedProperties": False}
        assert violations(schema, {"xa": 1, "b": 2}) == [
            {"path": "$", "message": "Unevaluated properties are not allowed ('b' was "
                                     "unexpected)"}]

    def test_unevaluated_items_past_prefix_items(self) -> None:
        """``unevaluatedItems`` reports the items no keyword evaluated."""
        assert violations({"prefixItems": [{}], "unevaluatedItems": False}, [1, 2, 3]) == [
            {"path": "$", "message": "Unevaluated items are not allowed (2, 3 were "
                                     "unexpected)"}]

    @pytest.mark.parametrize(("items", "unique"), [
        ([1, 1.0], False),
        ([1, True], True),
        ([0, False], True),
        ([{"a": 1, "b": [1, 2]}, {"b": [1.0, 2], "a": 1}], False),
        ([[1, 2], [2, 1]], True),
        (["1", 1], True),
        ([None, None], False),
    ])
    def test_unique_items_follows_json_equality(self, items: list[Any], unique: bool) -> None:
        """``1 == 1.0``, ``true != 1``, object key order is irrelevant."""
        errors = violations({"uniqueItems": True}, items)
        assert errors == ([] if unique else [
            {"path": "$", "message": f"{items!r} has non-unique elements"}])

    def test_unique_items_is_linear(self) -> None:
        """100,000 distinct objects are checked by hashing, not pairwise."""
        assert violations({"uniqueItems": True}, [{"k": i} for i in range(100_000)]) == []

    def test_a_value_too_deep_to_validate_is_one_violation(self) -> None:
        """A RecursionError while validating is a typed violation at ``$``, never a crash."""
        value: list[Any] = []
        for _ in range(5000):
            value = [value]
        schema = {"$defs": {"t": {"type": "array", "items": {"$ref": "#/$defs/t"}}},
                  "$ref": "#/$defs/t"}
        assert violations(schema, value) == [
            {"path": "$", "message": "the value is nested too deeply to validate against "
                                     "this schema"}]


class TestRedactionOnRe2:
    """policy.redact compiles and runs on RE2 (POLICY-3021)."""

    @pytest.mark.parametrize(("pattern", "reason"), [
        ("(?=sk-)", "invalid perl operator: (?="),
        ("(a)\\1", "invalid escape sequence: \\1"),
    ])
    def test_a_pattern_re2_cannot_compile_is_refused(self, pattern: str, reason: str) -> None:
        """Lookaround and backreferences are refused naming ``policy.redact``."""
        with pytest.raises(InvalidParams) as info:
            validate_policy(Policy(redact=[pattern]))
        assert info.value.message == ("invalid redaction pattern (RE2, the linear-time "
                                      f"engine, does not compile it): {reason}")
        assert info.value.data == {"field": "policy.redact", "pattern": pattern}

    def test_a_catastrophic_pattern_redacts_a_hostile_prompt(self) -> None:
        """``(a|aa)+$`` over ``"a"*100000 + "!"`` finishes: RE2 finds no match."""
        text = "a" * 100_000 + "!"
        assert redact(Policy(redact=["(a|aa)+$"]), [text]) == ([text], 0)

    def test_redaction_replaces_every_match(self) -> None:
        """Matches of any pattern become ``[REDACTED]``, counted."""
        assert redact(Policy(redact=["sk-[A-Za-z0-9]+", "\\d{3}-\\d{4}"]),
                      ["key sk-ABC and 555-1234", "none"]) == (
            ["key [REDACTED] and [REDACTED]", "none"], 2)

    def test_quadratic_redaction_work_is_refused(self) -> None:
        """A pattern that reads to the end of the text for every short match hits the
        redaction work bound instead of stalling."""
        with pytest.raises(InvalidParams) as info:
            redact(Policy(redact=["a.*b|a"]), ["a" * 200_000])
        assert info.value.data == {"field": "policy.redact", "max_redactions": 4096,
                                   "max_scan_chars": 16 << 20}

    def test_too_many_replacements_are_refused(self) -> None:
        """More than 4,096 replacements in one Step input are refused."""
        with pytest.raises(InvalidParams) as info:
            redact(Policy(redact=["a"]), ["a" * 5000])
        assert info.value.data == {"field": "policy.redact", "max_redactions": 4096,
                                   "max_scan_chars": 16 << 20}


class TestWorkBudget:
    """Validation has a budget of keyword evaluations, so no schema/value pair holds the
    event loop [POLICY-3020]."""

    def test_fan_out_over_a_nested_value_is_one_violation(self) -> None:
        """Two references per array level over 40 levels would be 2**40 evaluations; the
        budget ends it as one violation at ``$``."""
        schema = {"$defs": {"t": {"items": {"allOf": [{"$ref": "#/$defs/t"},
                                                      {"$ref": "#/$defs/t"}]}}},
                  "$ref": "#/$defs/t"}
        check_schema(schema, field="f")
        value: list[object] = []
        for _ in range(40):
            value = [value]
        assert violations(schema, value) == [{
            "path": "$", "message": "validating the value against this schema takes more "
                                    "than 30000 keyword evaluations"}]

    def test_a_huge_value_is_one_violation(self) -> None:
        """200,000 integers against an items schema exceed the budget."""
        schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
        assert violations(schema, list(range(200_000)))[0]["path"] == "$"

    def test_a_legitimate_value_fits(self) -> None:
        """A few thousand items validate normally."""
        schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
        assert violations(schema, [*range(3000), -1]) == [
            {"path": "$[3000]", "message": "-1 is less than the minimum of 0"}]

    def test_an_unevaluable_number_is_one_violation(self) -> None:
        """``multipleOf`` 0.1 on 10**400 (say, in a tool's output) overflows inside
        jsonschema: a violation, not a crash."""
        assert violations({"multipleOf": 0.1}, 10**400) == [{
            "path": "$", "message": "a number in the value cannot be evaluated against "
                                    "this schema"}]
