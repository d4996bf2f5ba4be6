"""Output shapes, intents schemas and engine constraints (NERVE-4010, NERVE-4011, NERVE-4013)."""

from __future__ import annotations

import pathlib
import random
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator

from contracts.errors import ContractViolation, InvalidParams
from contracts.flows import ToolSchema
from orchestrator_core.config import PoolConfig, mock_config
from orchestrator_core.planning import (
    ContractShape,
    PlanShape,
    check_contract_schema,
    intents_schema,
    menu_text,
    tool_menu,
)
from test_harness.bdd.conftest import run_to_end
from test_harness.support import MOCK_MODEL, app_client, parse_sse
from worker_adapters.base import CompletionRequest, EngineAdapter
from worker_adapters.mock import MockEngine, mock_instance
from worker_adapters.openai_http import completion_body, constraint_fields

TEXT = {"type": "object", "required": ["text"], "additionalProperties": False,
        "properties": {"text": {"type": "string", "maxLength": 32}}}
QUERY = {"type": "object", "required": ["document", "path"], "additionalProperties": False,
         "properties": {"document": {"type": "object"}, "path": {"type": "string"}}}
TOOLS = [ToolSchema(name="count", parameters=TEXT, description="Count words."),
         ToolSchema(name="query", parameters=QUERY)]


def _req(schema: dict[str, object] | None) -> CompletionRequest:
    return CompletionRequest(prompt="p", seed=1, temperature=0.0, top_k=40, top_p=0.95,
                             min_p=0.05, repeat_penalty=1.0, max_tokens=8, json_schema=schema)


class TestToolMenu:
    def test_default_menu_is_every_declared_tool_in_order(self) -> None:
        assert [t.name for t in tool_menu(TOOLS, None)] == ["count", "query"]

    def test_named_menu_keeps_the_callers_order(self) -> None:
        assert [t.name for t in tool_menu(TOOLS, ["query", "count"])] == ["query", "count"]

    @pytest.mark.parametrize("names", [["count", "rm"], ["count", "count"]])
    def test_undeclared_or_repeated_names_are_invalid_params(self, names: list[str]) -> None:
        with pytest.raises(InvalidParams):
            tool_menu(TOOLS, names)

    def test_a_flow_without_tools_has_no_menu(self) -> None:
        with pytest.raises(InvalidParams):
            tool_menu([], None)

    def test_menu_text_shows_each_tool_with_its_schema_in_canonical_json(self) -> None:
        text = menu_text(TOOLS[:1], 2)
        assert "with 1 to 2 intents" in text
        assert ('- count: Count words. Arguments (JSON Schema): {"additionalProperties":false,'
                '"properties":{"text":{"maxLength":32,"type":"string"}},"required":["text"],'
                '"type":"object"}') in text.splitlines()


class TestIntentsSchema:
    def test_strict_schema_gives_each_tool_its_own_argument_schema(self) -> None:
        schema = intents_schema(TOOLS, 3)
        Draft202012Validator.check_schema(schema)
        items = schema["properties"]["intents"]
        assert (items["minItems"], items["maxItems"]) == (1, 3)
        assert [b["properties"] for b in items["items"]["anyOf"]] == [
            {"tool": {"const": "count"}, "args": TEXT}, {"tool": {"const": "query"}, "args": QUERY}]

    def test_strict_schema_accepts_valid_intents_and_rejects_wrong_args(self) -> None:
        v = Draft202012Validator(intents_schema(TOOLS, 2))
        assert v.is_valid({"intents": [{"tool": "count", "args": {"text": "a"}}]})
        assert not v.is_valid({"intents": [{"tool": "count", "args": {"text": 1}}]})
        assert not v.is_valid({"intents": []})

    def test_loose_schema_only_names_the_menu(self) -> None:
        v = Draft202012Validator(intents_schema(TOOLS, 2, strict=False))
        assert v.is_valid({"intents": [{"tool": "count", "args": {"text": 1}}]})
        assert not v.is_valid({"intents": [{"tool": "rm", "args": {}}]})

    def test_the_mock_engine_answers_a_valid_document_of_any_intents_schema(self) -> None:
        schema = intents_schema(TOOLS, 4)
        v = Draft202012Validator(schema)
        for seed in range(50):
            assert v.is_valid(mock_instance(schema, random.Random(seed)))


class TestShapes:
    def test_contract_value_is_parsed_and_whitespace_tolerated(self) -> None:
        out, frames = ContractShape(TEXT).finish(' {"text": "hi"}\n', "stop")
        assert (out, frames) == ({"text": ' {"text": "hi"}\n', "value": {"text": "hi"}}, [])

    @pytest.mark.parametrize(("text", "finish", "reason"), [
        ('{"text": "h', "length", "truncated"),
        ('{"text": "h', "stop", "not_json"),
        ("hello", "stop", "not_json"),
        ('{"text": 3}', "stop", "schema"),
        ('{"text": "a", "x": 1}', "stop", "schema"),
    ])
    def test_contract_violations_are_typed(self, text: str, finish: str, reason: str) -> None:
        with pytest.raises(ContractViolation) as info:
            ContractShape(TEXT).finish(text, finish)
        env = info.value.envelope()
        assert (env.code.value, env.retriable) == ("CONTRACT_VIOLATION", False)
        assert env.data is not None and env.data["reason"] == reason
        assert env.data["finish_reason"] == finish

    def test_plan_marks_each_intent_valid_or_invalid_with_a_typed_error(self) -> None:
        text = ('{"intents": [{"tool": "count", "args": {"text": "a b"}},'
                ' {"tool": "count", "args": {}}, {"tool": "rm", "args": {"x": 1}}]}')
        out, frames = PlanShape(TOOLS[:1], 4).finish(text, "stop")
        assert [(f.i, f.tool, f.valid) for f in frames] == [
            (0, "count", True), (1, "count", False), (2, "rm", False)]
        assert frames[0].error is None
        reasons = [(f.error.code.value, (f.error.data or {})["reason"])
                   for f in frames[1:] if f.error is not None]
        assert reasons == [("INVALID_TOOL_ARGS", "schema"), ("INVALID_TOOL_ARGS", "not_on_menu")]
        assert out["valid"] == 1
        assert out["intents"][2] == {"tool": "rm", "args": {"x": 1}, "valid": False}

    @pytest.mark.parametrize("text", ['{"plan": []}', '{"intents": []}', '[1, 2]',
                                      '{"intents": [{"tool": "count"}]}',
                                      '{"intents": [{}, {}, {}, {}, {}]}'])
    def test_a_plan_without_the_envelope_is_a_contract_violation(self, text: str) -> None:
        with pytest.raises(ContractViolation):
            PlanShape(TOOLS, 4).finish(text, "stop")

    def test_a_contract_that_is_not_a_json_schema_is_invalid_params(self) -> None:
        with pytest.raises(InvalidParams) as info:
            check_contract_schema({"type": "no-such-type"})
        assert info.value.data == {"field": "input.response_contract", "path": "/type"}


class TestEngineConstraint:
    def test_gbnf_grammar_is_compiled_from_the_schema(self) -> None:
        body = completion_body(_req(intents_schema(TOOLS, 2)), "gbnf")
        grammar = body["grammar"]
        assert isinstance(grammar, str)
        assert grammar.count("root ::=") == 1 and '"\\"count\\""' in grammar

    @pytest.mark.parametrize("form", ["json_schema", "guided_json"])
    def test_other_engines_get_the_schema_in_their_field(self, form: str) -> None:
        body = completion_body(_req(TEXT), form)  # type: ignore[arg-type]
        assert body[form] == TEXT and "grammar" not in body

    def test_no_schema_or_no_constraint_adds_nothing(self) -> None:
        plain = completion_body(_req(None), "gbnf")
        assert completion_body(_req(TEXT), None) == plain
        assert set(plain) & {"grammar", "json_schema", "guided_json"} == set()

    def test_a_schema_the_grammar_compiler_cannot_express_is_invalid_params(self) -> None:
        with pytest.raises(InvalidParams):
            constraint_fields("gbnf", {"type": "string", "pattern": "[a-z]+"})

    def test_the_request_with_a_schema_still_encodes(self) -> None:
        assert msgspec.json.decode(msgspec.json.encode(_req(TEXT)))["json_schema"] == TEXT


@pytest.mark.parametrize("schema", [
    {"type": "string", "maxLength": 10**9},
    {"type": "array", "minItems": 5000, "items": {"type": "integer"}},
    {"type": "object", "properties": {"a": {"type": "array", "maxItems": 1001}}},
])
def test_unbounded_repetitions_are_refused_before_the_grammar_is_built(
        schema: dict[str, object]) -> None:
    """The converter unrolls bounds: a huge one would exhaust memory, so it is refused."""
    with pytest.raises(InvalidParams) as info:
        constraint_fields("gbnf", schema)
    assert info.value.data is not None and info.value.data["limit"] == 1000


def test_the_mock_answers_huge_bounds_without_building_them() -> None:
    """A contract the engine cannot satisfy cheaply still gets a bounded answer."""
    doc = mock_instance({"type": "array", "minItems": 10**9,
                         "items": {"type": "string", "minLength": 10**9}}, random.Random(0))
    assert len(doc) == 64 and all(4096 <= len(s) < 4200 for s in doc)


class _GbnfMock(MockEngine):
    """The mock engine, refusing schemas exactly as the llama.cpp grammar compiler does."""

    def check_constraint(self, schema: dict[str, Any]) -> None:
        constraint_fields("gbnf", schema)


def test_a_plan_whose_tool_schema_has_no_grammar_falls_back_to_the_loose_envelope(
        tmp_path: pathlib.Path) -> None:
    """[NERVE-4010] [NERVE-4094] A tool schema the grammar cannot express (an unanchored
    pattern), with ``fallback: "allow"``: decoding is constrained to the loose envelope,
    the step's suggestions are still validated against the tool's schema, and the end
    frame's provenance says ``fallback: "envelope"``."""
    engines: list[_GbnfMock] = []

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        engines.append(_GbnfMock())
        return engines[-1]

    tool = {"name": "grep", "parameters": {"type": "object", "required": ["q"],
                                           "properties": {"q": {"type": "string",
                                                                "pattern": "[a-z]+"}}}}
    with app_client(mock_config(data_dir=str(tmp_path)), engine_factory=factory) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {"t": 1}, "tools": [tool]}).json()
        run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()
        _step, raw = run_to_end(client, run["run_id"], {
            "type": "llm_plan", "client_token": "p", "input": {
                "model": MOCK_MODEL, "prompt": "find words", "params": {"max_tokens": 200},
                "fallback": "allow"}})
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    assert frames[-1]["event"] == "end"
    assert msgspec.json.decode(frames[-1]["data"])["provenance"]["fallback"] == "envelope"
    sent = engines[0].last_request
    assert sent is not None and sent.json_schema == intents_schema(
        [msgspec.convert(tool, ToolSchema)], 4, strict=False)
    assert any(f["event"] == "tool_suggest" for f in frames)
