"""Hypothesis strategies that turn valid request bodies into hostile ones.

Each strategy draws a :class:`HostileCase`: one or more raw HTTP requests (method, path,
body bytes, headers) that together carry one hostile input to the server. A case starts
from a valid body of one of the body operations (``POST /v1/flows``, ``.../runs``,
``.../steps`` with each step type, ``.../facts``, ``.../checkpoint``), aimed at the ids the
fuzz fixture seeded (:class:`Targets`), and spoils it in one way:

* ``content_type``: a valid body sent as ``text/plain``, a form, XML, or with no
  Content-Type at all (the edge must answer 415);
* ``deep_nesting``: 65 to 20,000 nested lists/objects/schemas (or an unclosed run of
  them) at a free-JSON position, and bodies exactly at the 64-level limit;
* ``invalid_utf8``: lone continuation bytes, overlong encodings, UTF-8-encoded
  surrogates, truncated sequences, inside strings, in keys and between tokens; and
  escaped lone surrogates (``"\\ud800"``), which are valid JSON but not Unicode text;
* ``huge_numbers``: ±2**63, ±2**64, 10**30, a 4,001-digit and a 5,000-digit integer,
  ±1e999 and in-range extremes at numeric positions of bodies, in ``limit``/``since_seq``
  query parameters and as ``Last-Event-ID`` on both SSE routes;
* ``deep_schema``: JSON Schemas nested up to the limit, recursive ``$ref`` (``#``,
  self and mutual cycles through ``allOf``/``anyOf``) in tool parameters, tool output
  schemas, ``config.fact_schemas`` and ``response_contract``, each followed by the
  request that makes the server use the schema;
* ``catastrophic_patterns``: backtracking patterns (``^(a+)+$`` ...) and patterns RE2
  cannot express (backreferences, lookarounds) in ``pattern``, ``patternProperties``,
  ``propertyNames`` and a Run's ``policy.redact``, each paired with ``"a"*30 + "!"``
  where the pattern is matched (tool args, fact data, a prompt);
* ``gate_expressions``: JMESPath nested 50 to 5,000 deep (``((…))``, ``[[…]]``,
  ``length(length(…))``, ``!!!…@``), ``a.b.c…`` up to 5,000 characters, and 8 to 20
  doubling stages ``[@,@] | [@,@] | …`` (an answer of up to 2**20 leaves).

A case that needs a Flow or Run of its own (a hostile tool schema, a redaction policy)
creates it first: those requests carry the hostile input too, and a refusal there ends
the case. Requests whose answer the edge fixes (415, 400) say so in ``expect``.
Step submissions carry :data:`FRESH_TOKEN` as client_token; the sender replaces it with a
new token so that every accepted submission creates a Step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from test_harness.fuzz.bodies import (
    FRESH_TOKEN,
    MAX_DEPTH,
    STEP,
    Op,
    Raw,
    Targets,
    encode,
    operations,
    set_at,
)

__all__ = ["CATEGORIES", "EVIL_TEXT", "HostileCase", "Req", "expression", "hostile_cases",
           "nest"]

EVIL_TEXT = "a" * 30 + "!"
"""The input that makes a backtracking pattern take exponential time."""
CATEGORIES = ("content_type", "gate_expressions", "deep_schema", "catastrophic_patterns",
              "invalid_utf8", "deep_nesting", "huge_numbers")
"""The hostile categories, in the order the fuzz test runs them: those with few distinct
cases first, so that what they cannot use goes to the ones with many."""


@dataclass(frozen=True)
class Req:
    """One raw request of a case.

    ``path`` may name ``{flow_id}``/``{run_id}`` captured from an earlier request of the
    same case; ``capture`` names the id to take from this answer; ``expect`` lists the
    only statuses allowed (empty: any status but 500); ``stream`` marks an SSE route.
    """

    label: str
    method: str
    path: str
    body: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = (("content-type", b"application/json"),)
    expect: frozenset[int] = frozenset()
    capture: str | None = None
    stream: bool = False


@dataclass(frozen=True)
class HostileCase:
    """A hostile input: its category, the operation it targets, what it is, its requests,
    and the family of cases it belongs to (where the input is used: ``policy.redact``,
    ``pattern in tool parameters``...), which a stall-prone fuzz may give up on as one."""

    category: str
    operation: str
    note: str
    requests: tuple[Req, ...]
    family: str = ""


def _req(op: Op, body: Any, expect: frozenset[int] = frozenset(),
         headers: tuple[tuple[str, bytes], ...] | None = None) -> Req:
    raw = body if isinstance(body, bytes) else encode(body)
    if headers is None:
        return Req(op.label, "POST", op.path, raw, expect=expect)
    return Req(op.label, "POST", op.path, raw, headers=headers, expect=expect)


def _case(category: str, op: Op, note: str, *reqs: Req) -> HostileCase:
    return HostileCase(category, op.label, note, reqs)


# -- content_type ------------------------------------------------------------------------

CONTENT_TYPES: tuple[bytes | None, ...] = (
    None, b"text/plain", b"text/plain; charset=utf-8", b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x", b"application/xml", b"application/json-patch+json",
    b"application/jsonx", b"json", b"*/*")


def _content_type(ops: list[Op]) -> st.SearchStrategy[HostileCase]:
    def build(op: Op, ctype: bytes | None) -> HostileCase:
        headers = () if ctype is None else (("content-type", ctype),)
        note = "no Content-Type" if ctype is None else f"Content-Type {ctype.decode()}"
        return _case("content_type", op, note,
                     _req(op, op.body, frozenset({415}), headers))
    return st.builds(build, st.sampled_from(ops), st.sampled_from(CONTENT_TYPES))


# -- deep_nesting ------------------------------------------------------------------------

def nest(levels: int, shape: str) -> Raw:
    """Exactly ``levels`` (>= 1) nested containers of ``shape``: lists, objects, both
    alternating, a JSON Schema's ``items``/``not``/``properties``/``allOf`` chain, or an
    unclosed run of ``[``."""
    inner = max(levels - 1, 0)
    if shape == "list":
        return Raw(b"[" * levels + b"]" * levels)
    if shape == "object":
        return Raw(b'{"a":' * inner + b"{}" + b"}" * inner)
    if shape == "mixed":
        opens = [b"[" if i % 2 else b'{"k":' for i in range(inner)]
        closes = [b"]" if i % 2 else b"}" for i in reversed(range(inner))]
        return Raw(b"".join(opens) + b"[]" + b"".join(closes))
    if shape == "schema_items":
        return Raw(b'{"type":"array","items":' * inner + b"{}" + b"}" * inner)
    if shape == "schema_not":
        return Raw(b'{"not":' * inner + b'{"type":"null"}' + b"}" * inner)
    # Two levels per step (two objects, or an object and a list); an odd level left over
    # goes to the innermost schema.
    half, core = inner // 2, b"{}" if inner % 2 == 0 else b'{"not":{}}'
    if shape == "schema_properties":
        return Raw(b'{"properties":{"a":' * half + core + b"}}" * half)
    if shape == "schema_allof":
        return Raw(b'{"allOf":[' * half + core + b"]}" * half)
    if shape == "unclosed":
        return Raw(b"[" * levels)
    raise ValueError(shape)


NEST_SHAPES = ("list", "object", "mixed", "schema_items", "schema_not", "schema_allof",
               "schema_properties", "unclosed")
OVER_LIMIT = st.one_of(st.sampled_from([65, 66, 100, 1000, 10_000, 20_000]),
                       st.integers(65, 20_000))


def _deep_nesting(ops: list[Op]) -> st.SearchStrategy[HostileCase]:
    @st.composite
    def build(draw: st.DrawFn) -> HostileCase:
        op = draw(st.sampled_from(ops))
        slot = draw(st.sampled_from(op.free))
        shape = draw(st.sampled_from(NEST_SHAPES))
        where = draw(st.sampled_from(["at the limit", "one over the limit", "over the limit"]))
        body = copy.deepcopy(op.body)
        if where == "over the limit":
            levels = draw(OVER_LIMIT)
        else:  # the slot itself is a value inside len(slot) containers
            levels = MAX_DEPTH - len(slot) + (where == "one over the limit")
        set_at(body, slot, nest(levels, shape))
        refused = where != "at the limit" or shape == "unclosed"
        return _case("deep_nesting", op, f"{levels} levels of {shape} at {slot} ({where})",
                     _req(op, body, frozenset({400}) if refused else frozenset()))
    return build()


# -- invalid_utf8 ------------------------------------------------------------------------

BAD_UTF8: dict[str, bytes] = {
    "lone continuation byte": b"\x80", "continuation run": b"\xbf\xbf\xbf",
    "overlong '/'": b"\xc0\xaf", "overlong NUL": b"\xc0\x80", "overlong 3-byte": b"\xe0\x80\xaf",
    "overlong 4-byte": b"\xf0\x80\x80\xaf", "UTF-8 high surrogate": b"\xed\xa0\x80",
    "UTF-8 low surrogate": b"\xed\xbf\xbf",
    "surrogate pair as UTF-8": b"\xed\xa0\xbd\xed\xb8\x80", "truncated 2-byte": b"\xc3",
    "truncated 3-byte": b"\xe2\x82", "truncated 4-byte": b"\xf0\x9f\x98",
    "above U+10FFFF": b"\xf4\x90\x80\x80", "byte 0xFF": b"\xff", "byte 0xFE": b"\xfe",
    "latin-1 text": b"caf\xe9",
}
ESCAPED_SURROGATES = (b"\\ud800", b"\\udfff", b"\\udc00\\ud800", b"\\ud83d")


def _invalid_utf8(ops: list[Op]) -> st.SearchStrategy[HostileCase]:
    @st.composite
    def build(draw: st.DrawFn) -> HostileCase:
        op = draw(st.sampled_from(ops))
        where = draw(st.sampled_from(["in a string", "in a key", "between tokens",
                                      "before the body", "escaped surrogate"]))
        name, bad = draw(st.sampled_from(sorted(BAD_UTF8.items())))
        body: dict[Any, Any] = copy.deepcopy(op.body)
        expect = frozenset({400})
        if where == "in a string":
            set_at(body, draw(st.sampled_from(op.strings)), Raw(b'"ab' + bad + b'cd"'))
        elif where == "in a key":
            slot = draw(st.sampled_from([(), *op.free]))
            if slot:
                set_at(body, slot, {Raw(b'"k' + bad + b'"'): 1})
            else:
                body[Raw(b'"k' + bad + b'"')] = 1
        elif where == "between tokens":
            set_at(body, draw(st.sampled_from(op.strings)), Raw(bad + b'"x"'))
        elif where == "escaped surrogate":  # valid JSON, not valid Unicode: no fixed status
            name = draw(st.sampled_from(ESCAPED_SURROGATES)).decode()
            set_at(body, draw(st.sampled_from(op.strings)), Raw(b'"x' + name.encode() + b'"'))
            expect = frozenset()
        raw = encode(body)
        if where == "before the body":
            raw = bad + raw
        return _case("invalid_utf8", op, f"{name} {where}", _req(op, raw, expect))
    return build()


# -- huge_numbers ------------------------------------------------------------------------

OUT_OF_RANGE: tuple[bytes, ...] = (
    b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616",
    b"-18446744073709551616", b"1" + b"0" * 30, b"-1" + b"0" * 30, b"1" + b"0" * 4000,
    b"9" * 5000, b"1e999", b"-1e999", b"1E400", b"123456789012345678901234567890.5e99999")
"""Outside int64 or the float range: the edge refuses them with 400."""
EXTREMES: tuple[bytes, ...] = (
    b"9223372036854775807", b"-9223372036854775808", b"1.7976931348623157e308",
    b"-1.7976931348623157e308", b"5e-324", b"-0.0", b"-1", b"0", b"4294967296")
"""Inside int64 and the float range, outside what the field means: the domain decides."""
BAD_LAST_EVENT_IDS: tuple[bytes, ...] = (
    *OUT_OF_RANGE[:8], b"-1", b"-9223372036854775808", b"1e999", b"1.5", b"0x10", b"NaN",
    b"", b"1 2", b"\xff1", b"\xd9\xa3")
"""``Last-Event-ID`` values that are not a sequence number in [0, 2**63): 400."""
ODD_LAST_EVENT_IDS: tuple[bytes, ...] = (b"1_0", b"+1", b"0_0_1")
"""Not plain digits, yet Python's ``int()`` reads them: a stream may start."""


def _huge_numbers(ops: list[Op], t: Targets) -> st.SearchStrategy[HostileCase]:
    numeric = [op for op in ops if op.numbers]

    @st.composite
    def in_body(draw: st.DrawFn) -> HostileCase:
        op = draw(st.sampled_from(numeric))
        slot = draw(st.sampled_from(op.numbers))
        out = draw(st.booleans())
        value = draw(st.sampled_from(OUT_OF_RANGE if out else EXTREMES))
        body = copy.deepcopy(op.body)
        set_at(body, slot, Raw(value))
        return _case("huge_numbers", op, f"{_shown_number(value)} at {slot}",
                     _req(op, body, frozenset({400}) if out else frozenset()))

    @st.composite
    def in_query(draw: st.DrawFn) -> HostileCase:
        label, path, name = draw(st.sampled_from([
            ("GET /v1/runs/{run_id}/facts", f"/v1/runs/{t.run_id}/facts", "limit"),
            ("GET /v1/runs/{run_id}/facts", f"/v1/runs/{t.run_id}/facts", "since_seq"),
            ("GET /v1/flows/{flow_id}/facts", f"/v1/flows/{t.flow_id}/facts", "limit")]))
        value = draw(st.sampled_from(OUT_OF_RANGE + EXTREMES[:4]))
        req = Req(label, "GET", f"{path}?{name}={value.decode()}", headers=(),
                  expect=frozenset({400}))
        return HostileCase("huge_numbers", label, f"{name}={_shown_number(value)}", (req,))

    @st.composite
    def last_event_id(draw: st.DrawFn) -> HostileCase:
        label, path = draw(st.sampled_from([
            ("GET /v1/steps/{step_id}/stream", f"/v1/steps/{t.step_id}/stream"),
            ("GET /v1/runs/{run_id}/facts/stream", f"/v1/runs/{t.run_id}/facts/stream")]))
        odd = draw(st.integers(0, 9)) == 0
        value = draw(st.sampled_from(ODD_LAST_EVENT_IDS if odd else BAD_LAST_EVENT_IDS))
        req = Req(label, "GET", path, headers=(("last-event-id", value),),
                  expect=frozenset() if odd else frozenset({400}), stream=True)
        return HostileCase("huge_numbers", label, f"Last-Event-ID {_shown_number(value)}", (req,))

    return st.one_of(in_body(), in_body(), in_query(), last_event_id())


def _shown_number(value: bytes) -> str:
    """A number literal for a report: long ones as their first digits and length."""
    text = value.decode(errors="replace")
    return repr(text) if len(text) <= 32 else f"{text[:8]}…({len(text)} chars)"


# -- shared by the schema and pattern categories -----------------------------------------

def _flow_body(tools: list[dict[str, Any]] | None = None,
               fact_schemas: dict[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    return {"ast_ir": {"suite": "hostile-schema", "tag": tag}, "tools": tools or [],
            "config": {"fact_schemas": fact_schemas or {}}}


def _chain(op: str, flow: dict[str, Any] | None, run: dict[str, Any] | None,
           final: tuple[str, dict[str, Any]]) -> tuple[Req, ...]:
    """Create a Flow (if given) and a Run (if given) of it, then send ``final``, a
    ``("steps" | "facts", body)`` aimed at that Run."""
    reqs = []
    if flow is not None:
        reqs.append(Req("POST /v1/flows", "POST", "/v1/flows", encode(flow), capture="flow_id"))
    if run is not None:
        reqs.append(Req("POST /v1/flows/{flow_id}/runs", "POST", "/v1/flows/{flow_id}/runs",
                        encode(run), capture="run_id"))
    kind, body = final
    reqs.append(Req(op, "POST", f"/v1/runs/{{run_id}}/{kind}", encode(body)))
    return tuple(reqs)


def _schema_targets(t: Targets, schema: Any, instance: Any, tag: str) -> dict[
        str, tuple[str, tuple[Req, ...]]]:
    """Every place a request-supplied JSON Schema is used, with the request using it."""
    evil_tool = {"name": "evil", "executor": "wc", "parameters": schema}
    out_tool = {"name": "evil", "executor": "wc", "parameters": {"type": "object"},
                "output_schema": schema}
    tool_call = {"type": "tool_call", "client_token": FRESH_TOKEN,
                 "input": {"tool": "evil", "args": instance}}
    plan = {"type": "llm_plan", "client_token": FRESH_TOKEN,
            "input": {"model": t.model, "prompt": EVIL_TEXT, "tools": ["evil"],
                      "params": {"max_tokens": 64}}}
    fact = {"type": "evil", "schema_uri": "urn:fuzz:evil", "data": instance}
    contract = {"type": "llm_call", "client_token": FRESH_TOKEN,
                "input": {"model": t.model, "prompt": EVIL_TEXT, "response_contract": schema,
                          "params": {"max_tokens": 64}}}
    return {
        "tool parameters": (f"{STEP} tool_call", _chain(
            f"{STEP} tool_call", _flow_body([evil_tool], tag=tag), {}, ("steps", tool_call))),
        "tool parameters, planned": (f"{STEP} llm_plan", _chain(
            f"{STEP} llm_plan", _flow_body([evil_tool], tag=tag), {}, ("steps", plan))),
        "tool output_schema": (f"{STEP} tool_call", _chain(
            f"{STEP} tool_call", _flow_body([out_tool], tag=tag), {},
            ("steps", {**tool_call, "input": {"tool": "evil", "args": {"text": EVIL_TEXT}}}))),
        "config.fact_schemas": ("POST /v1/runs/{run_id}/facts", _chain(
            "POST /v1/runs/{run_id}/facts", _flow_body(fact_schemas={"urn:fuzz:evil": schema},
                                                       tag=tag), {}, ("facts", fact))),
        "response_contract": (f"{STEP} llm_call", (Req(
            f"{STEP} llm_call", "POST", f"/v1/runs/{t.run_id}/steps", encode(contract)),)),
    }


# -- deep_schema -------------------------------------------------------------------------

RECURSIVE_SCHEMAS: dict[str, Any] = {
    "$ref #": {"$ref": "#"},
    "$ref # under properties": {"type": "object", "properties": {"a": {"$ref": "#"}}},
    "$ref # in anyOf": {"anyOf": [{"$ref": "#"}, {"type": "string"}]},
    "self cycle in $defs": {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}},
    "mutual allOf cycle": {"$ref": "#/$defs/a", "$defs": {
        "a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}},
    "mutual cycle, three schemas": {"$ref": "#/$defs/a", "$defs": {
        "a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"oneOf": [{"$ref": "#/$defs/c"}]},
        "c": {"allOf": [{"$ref": "#/$defs/a"}]}}},
    "$dynamicRef cycle": {"$dynamicAnchor": "n", "anyOf": [{"$dynamicRef": "#n"}]},
}
_DEEP_SHAPES = ("schema_properties", "schema_items", "schema_not", "schema_allof")
_SCHEMA_SLOT_DEPTH = 3
"""Containers around a schema in its request: ``tools[i].parameters``, ``config.fact_schemas
[uri]`` (``input.response_contract`` has 2)."""


def _deep_schema(t: Targets) -> st.SearchStrategy[HostileCase]:
    @st.composite
    def build(draw: st.DrawFn) -> HostileCase:
        levels = 0
        if draw(st.booleans()):
            name = draw(st.sampled_from(sorted(RECURSIVE_SCHEMAS)))
            schema: Any = RECURSIVE_SCHEMAS[name]
            instance: Any = {"a": nest(draw(st.sampled_from([1, 8, 40])), "object")}
        else:
            shape = draw(st.sampled_from(_DEEP_SHAPES))
            levels = draw(st.sampled_from([16, 30, 50, 58, 61, 65, 1000]))
            name = f"{levels} levels of {shape}"
            schema = nest(levels, shape)
            instance = {"a": nest(min(levels, 55), "object")}
        where = draw(st.sampled_from(sorted(_schema_targets(t, {}, {}, ""))))
        label, reqs = _schema_targets(t, schema, instance, name)[where]
        if isinstance(schema, Raw) and _SCHEMA_SLOT_DEPTH + levels > MAX_DEPTH:  # 400 at once
            reqs = (Req(reqs[0].label, reqs[0].method, reqs[0].path, reqs[0].body,
                        expect=frozenset({400}), capture=reqs[0].capture),)
        return HostileCase("deep_schema", label, f"{name} in {where}", reqs, where)
    return build()


# -- catastrophic_patterns ---------------------------------------------------------------

CATASTROPHIC = (r"^(a+)+$", r"(a|aa)+$", r"(a|a?)+$", r"^(\w+\s?)*$", r"(.*a){20}",
                r"^(a|a)*$", r"^([a-z]+)*[0-9]$")
"""Exponential (or high-degree polynomial) time on a backtracking engine."""
NOT_RE2 = (r"(a)\1", r"^(a+)\1$", r"(?=a)a", r"(?!b)a", r"(?<=a)a", r"(?<!b)a",
           r"(?P<x>a)(?P=x)")
"""Patterns RE2 cannot express: backreferences and lookarounds."""


def _catastrophic(t: Targets) -> st.SearchStrategy[HostileCase]:
    @st.composite
    def build(draw: st.DrawFn) -> HostileCase:
        pattern = draw(st.sampled_from(CATASTROPHIC + NOT_RE2))
        keyword = draw(st.sampled_from(["pattern", "patternProperties", "propertyNames",
                                        "policy.redact"]))
        if keyword == "policy.redact":
            messages = draw(st.booleans())
            llm: dict[str, Any] = {"model": t.model, "params": {"max_tokens": 4}}
            if messages:
                llm["messages"] = [{"role": "user", "content": EVIL_TEXT}]
            else:
                llm["prompt"] = EVIL_TEXT
            step = {"type": "llm_call", "client_token": FRESH_TOKEN, "input": llm}
            run = {"seed": 1, "policy": {"redact": [pattern]}}
            chain = (Req("POST /v1/flows/{flow_id}/runs", "POST", f"/v1/flows/{t.flow_id}/runs",
                         encode(run), capture="run_id"),
                     Req(f"{STEP} llm_call", "POST", "/v1/runs/{run_id}/steps", encode(step)))
            return HostileCase("catastrophic_patterns", f"{STEP} llm_call",
                               f"{pattern!r} in policy.redact, prompt {EVIL_TEXT!r}", chain,
                               "policy.redact")
        if keyword == "pattern":
            schema: dict[str, Any] = {"type": "object", "properties": {
                "text": {"type": "string", "pattern": pattern}}}
            instance: dict[str, Any] = {"text": EVIL_TEXT}
        elif keyword == "patternProperties":
            schema = {"type": "object", "patternProperties": {pattern: {"type": "string"}}}
            instance = {EVIL_TEXT: "x", "text": "x"}
        else:
            schema = {"type": "object", "propertyNames": {"pattern": pattern}}
            instance = {EVIL_TEXT: "x"}
        where = draw(st.sampled_from(sorted(_schema_targets(t, {}, {}, ""))))
        label, reqs = _schema_targets(t, schema, instance, pattern)[where]
        return HostileCase("catastrophic_patterns", label,
                           f"{pattern!r} as {keyword} in {where}", reqs, f"{keyword} in {where}")
    return build()


# -- gate_expressions --------------------------------------------------------------------

MAX_EXPRESSION = 4096
"""``GateEvalInput.expression`` max_length: longer is refused before any parsing."""


def expression(kind: str, size: int) -> str:
    """A JMESPath expression of ``kind`` whose nesting or length grows with ``size``."""
    if kind == "parens":
        return "(" * size + "@" + ")" * size
    if kind == "brackets":
        return "[" * size + "@" + "]" * size
    if kind == "functions":
        return "length(" * size + "@" + ")" * size
    if kind == "not":
        return "!" * size + "@"
    if kind == "dots":
        letters = "abcdefghijklmnopqrstuvwxyz"
        return ".".join(letters[i % 26] for i in range(size))
    if kind == "doubling":
        return " | ".join(["@", *["[@,@]"] * size])
    if kind == "doubling literal":
        return " | ".join(['`"xxxxxxxxxxxxxxxx"`', *["[@,@]"] * size])
    raise ValueError(kind)


def _gate(t: Targets) -> st.SearchStrategy[HostileCase]:
    @st.composite
    def build(draw: st.DrawFn) -> HostileCase:
        kind = draw(st.sampled_from(["parens", "brackets", "functions", "not", "dots",
                                     "doubling", "doubling literal"]))
        if kind.startswith("doubling"):  # 2**20 small leaves (~30 MB): not a memory bomb
            size = draw(st.sampled_from([8, 12, 16, 18, 20]))
        elif kind == "dots":
            size = draw(st.sampled_from([100, 1000, 2048, 2500]))
        else:
            size = draw(st.sampled_from([50, 200, 500, 1000, 1360, 2047, 5000]))
        expr = expression(kind, size)
        body = {"type": "gate_eval", "client_token": FRESH_TOKEN,
                "input": {"expression": expr, "wait_ms": 0}}
        expect = frozenset({400}) if len(expr) > MAX_EXPRESSION else frozenset()
        req = Req(f"{STEP} gate_eval", "POST", f"/v1/runs/{t.gate_run_id}/steps", encode(body),
                  expect=expect)
        return HostileCase("gate_expressions", req.label,
                           f"{kind} x{size} ({len(expr)} chars)", (req,))
    return build()


def hostile_cases(t: Targets) -> dict[str, st.SearchStrategy[HostileCase]]:
    """A strategy per category (keys in :data:`CATEGORIES` order) over the seeded ids.

    Args:
        t: the seeded ids; without ``fs_root`` no case touches ``fs_op`` or ``fs_policy``.
    """
    ops = operations(t)
    return {"content_type": _content_type(ops), "invalid_utf8": _invalid_utf8(ops),
            "deep_nesting": _deep_nesting(ops), "huge_numbers": _huge_numbers(ops, t),
            "deep_schema": _deep_schema(t), "gate_expressions": _gate(t),
            "catastrophic_patterns": _catastrophic(t)}
