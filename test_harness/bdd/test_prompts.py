"""No hidden prompts: raw prompts byte for byte, rendered chat text kept, hashed and read
back, a plan's fallback refused unless allowed (NERVE-4090, NERVE-4091, NERVE-4092,
NERVE-4094, NERVE-4051)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import blake3
import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import PoolConfig, ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import MOCK_MODEL, app_client, parse_sse
from test_harness.templated import SMOL_SYSTEM, SmolMock
from worker_adapters.base import EngineAdapter
from worker_adapters.openai_http import constraint_fields

scenarios("prompts.feature")

RAW = "<|im_start|>user\r\nnaïve 日本\t<|im_end|>\n  "
"""A raw prompt a chat template would rewrite."""

TEMPLATED = ("<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n"
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
"""What the template makes of ``[{"role": "user", "content": "Hi"}]``."""


def _b3(text: str) -> str:
    return "b3:" + blake3.blake3(text.encode("utf-8")).hexdigest()


class _GbnfSmol(SmolMock):
    """The templated mock, refusing schemas as the llama.cpp grammar compiler does."""

    def check_constraint(self, schema: dict[str, Any]) -> None:
        constraint_fields("gbnf", schema)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


@given("a server whose model's chat template adds its own system turn")
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """Two tenants; every replica renders with the SmolLM2-like template."""
    engines: list[SmolMock] = []

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        engines.append(_GbnfSmol())
        return engines[-1]

    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"ta": "alpha", "tb": "beta"})
    ctx["client"] = stack.enter_context(app_client(cfg, engine_factory=factory))
    ctx["engines"] = engines
    ctx["a"], ctx["b"] = {"Authorization": "Bearer ta"}, {"Authorization": "Bearer tb"}
    c = ctx["client"]
    flow = c.post("/v1/flows", json={"ast_ir": {"p": 1}}, headers=ctx["a"]).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={}, headers=ctx["a"]).json()
    ctx["run_id"] = run["run_id"]


def _run_llm(ctx: dict[str, Any], inp: dict[str, Any]) -> None:
    c = ctx["client"]
    c.headers.update(ctx["a"])
    step, raw = run_to_end(c, ctx["run_id"], {"type": "llm_call", "client_token": "s",
                                              "input": {"model": MOCK_MODEL, **inp}})
    ctx["step"] = step
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    assert frames[-1]["event"] == "end"
    ctx["end"] = json.loads(frames[-1]["data"])
    ctx["shown"] = c.get(f"/v1/steps/{step['step_id']}/prompt", headers=ctx["a"])


def _sent(ctx: dict[str, Any]) -> str:
    sent = [e.last_request.prompt for e in ctx["engines"] if e.last_request is not None]
    assert len(sent) == 1
    return str(sent[0])


@when("I run an llm_call with a raw prompt holding chat markup, CR LF and non-ASCII text")
def run_raw(ctx: dict[str, Any]) -> None:
    """A prompt step to its end, then its prompt read back."""
    _run_llm(ctx, {"prompt": RAW})


@when("I run an llm_call with one user message and no system message")
def run_chat(ctx: dict[str, Any]) -> None:
    """A messages step to its end, then its prompt read back."""
    _run_llm(ctx, {"messages": [{"role": "user", "content": "Hi"}]})


@then("the engine received exactly the prompt's bytes")
def got_raw(ctx: dict[str, Any]) -> None:
    """Byte for byte."""
    assert _sent(ctx).encode("utf-8") == RAW.encode("utf-8")


@then("the end frame's provenance has no rendered_hash")
def no_hash(ctx: dict[str, Any]) -> None:
    """Nothing else was shown to the model."""
    assert "rendered_hash" not in ctx["end"]["provenance"]
    assert "template" not in ctx["end"]["provenance"]


@then("GET prompt answers the prompt with its b3 hash and no template")
def shown_raw(ctx: dict[str, Any]) -> None:
    """The prompt itself."""
    assert ctx["shown"].status_code == 200
    assert ctx["shown"].json() == {"step_id": ctx["step"]["step_id"], "rendered": RAW,
                                   "hash": _b3(RAW), "template": None}


@then("the engine received the template's text with its own system turn")
def got_chat(ctx: dict[str, Any]) -> None:
    """The template's system turn is in what the engine saw."""
    assert _sent(ctx) == TEMPLATED


@then("the end frame's provenance rendered_hash is the b3 hash of that text")
def chat_hash(ctx: dict[str, Any]) -> None:
    """The hash of the exact bytes sent."""
    prov = ctx["end"]["provenance"]
    assert (prov["rendered_hash"], prov["template"]) == (_b3(TEMPLATED), "mock")


@then(parsers.parse('GET prompt answers that text, that hash and template "{template}"'))
def shown_chat(ctx: dict[str, Any], template: str) -> None:
    """The kept text, read back."""
    assert ctx["shown"].json() == {"step_id": ctx["step"]["step_id"], "rendered": TEMPLATED,
                                   "hash": _b3(TEMPLATED), "template": template}


@when("another tenant asks for that step's prompt and for an unknown step's")
def other_tenant(ctx: dict[str, Any]) -> None:
    """Tenant beta asks."""
    c = ctx["client"]
    ctx["theirs"] = c.get(f"/v1/steps/{ctx['step']['step_id']}/prompt", headers=ctx["b"])
    ctx["unknown"] = c.get("/v1/steps/stp_00000000000000000000000000/prompt",
                           headers=ctx["b"])


@then("both answer 404 NOT_FOUND naming the step id, alike but for the id")
def alike(ctx: dict[str, Any]) -> None:
    """Same status, code and shape; only the id differs."""
    ids = {"theirs": ctx["step"]["step_id"], "unknown": "stp_00000000000000000000000000"}
    for key, step_id in ids.items():
        resp = ctx[key]
        assert resp.status_code == 404
        assert resp.json() == {"code": "NOT_FOUND", "message": f"no step {step_id}",
                               "retriable": False, "data": {"step_id": step_id}}


@given("a flow declaring a tool whose schema the grammar cannot express")
def grep_flow(ctx: dict[str, Any]) -> None:
    """An unanchored pattern: the GBNF converter refuses it."""
    c = ctx["client"]
    tool = {"name": "grep", "parameters": {
        "type": "object", "required": ["q"],
        "properties": {"q": {"type": "string", "pattern": "[a-z]+"}}}}
    flow = c.post("/v1/flows", json={"ast_ir": {"g": 1}, "tools": [tool]},
                  headers=ctx["a"]).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={}, headers=ctx["a"]).json()
    ctx["plan_run"] = run["run_id"]


def _plan(ctx: dict[str, Any], token: str, **extra: Any) -> Any:
    return ctx["client"].post(f"/v1/runs/{ctx['plan_run']}/steps", headers=ctx["a"], json={
        "type": "llm_plan", "client_token": token,
        "input": {"model": MOCK_MODEL, "prompt": "find words",
                  "params": {"max_tokens": 200}, **extra}})


@when("I plan over that tool without a fallback")
def plan_default(ctx: dict[str, Any]) -> None:
    """No ``fallback`` field."""
    ctx["answer"] = _plan(ctx, "p1")


@then(parsers.parse('the answer is 400 with code INVALID_PARAMS naming field "{field}" and '
                    'fallback "{fallback}"'))
def refused(ctx: dict[str, Any], field: str, fallback: str) -> None:
    """Refused before anything ran."""
    resp = ctx["answer"]
    assert (resp.status_code, resp.json()["code"]) == (400, "INVALID_PARAMS"), resp.text
    data = resp.json()["data"]
    assert (data["field"], data["fallback"]) == (field, fallback)
    assert sum(e.requests for e in ctx["engines"]) == 0


@when(parsers.parse('I plan over that tool with fallback "{fallback}"'))
def plan_allowed(ctx: dict[str, Any], fallback: str) -> None:
    """Opted in."""
    resp = _plan(ctx, "p2", fallback=fallback)
    assert resp.status_code == 201, resp.text
    with ctx["client"].stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream",
                              headers=ctx["a"]) as s:
        raw = b"".join(s.iter_bytes())
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    assert frames[-1]["event"] == "end"
    ctx["end"] = json.loads(frames[-1]["data"])


@then(parsers.parse('the end frame\'s provenance says fallback "{fallback}"'))
def says_fallback(ctx: dict[str, Any], fallback: str) -> None:
    """Reported where the Step's determinism record is."""
    assert ctx["end"]["provenance"]["fallback"] == fallback
