"""Traces and logs as an operator reads them (OBS-8010..OBS-8012, OBS-8021..OBS-8024)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, llm_step, parse_sse
from test_harness.tracing_support import captured_logs, recorded_spans
from worker_adapters.base import ToolExecutorConfig

scenarios("observability.feature")

TOKEN = "tok-bdd-0c94e1"
WRONG = "tok-bdd-wrong-4410"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER = "b7ad6b7169203331"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app, span recording and log capture at teardown."""
    with ExitStack() as s:
        yield s


def _ids(span: Any) -> tuple[str, str, str | None]:
    ctx = span.get_span_context()
    parent = format(span.parent.span_id, "016x") if span.parent is not None else None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"), parent


@given("a traced mock server")
def traced(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """Spans recorded in memory; the mock engine."""
    ctx["tree"] = stack.enter_context(recorded_spans())
    ctx["client"] = stack.enter_context(app_client(mock_cfg))


@given("a mock server with a bearer token, logging JSON")
def with_token(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """JSON logs in a buffer, the token among the secrets; one tenant."""
    ctx["log"] = stack.enter_context(captured_logs("json", secrets=[TOKEN]))
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={TOKEN: "acme"})
    ctx["client"] = stack.enter_context(app_client(cfg))


@given("a mock server with a failing tool, logging JSON at debug")
def failing_tool(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """An argv executor that always exits 3, a Flow declaring it and a Run; logs at
    ``debug``, so every transition is written."""
    ctx["log"] = stack.enter_context(captured_logs("json", level=logging.DEBUG))
    cfg = msgspec.structs.replace(mock_cfg, tools={"fails": ToolExecutorConfig(
        kind="argv", argv=[sys.executable, "-c", "import sys; sys.exit(3)"])})
    client = ctx["client"] = stack.enter_context(app_client(cfg))
    flow = client.post("/v1/flows", json={"ast_ir": {}, "tools": [
        {"name": "bad", "executor": "fails", "parameters": {"type": "object"}}]}).json()
    ctx["run_id"] = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]


def _to_end(client: Any, run_id: str, body: dict[str, Any],
            headers: dict[str, str]) -> dict[str, Any]:
    resp = client.post(f"/v1/runs/{run_id}/steps", json=body, headers=headers)
    assert resp.status_code == 201, resp.text
    with client.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
        parse_sse(b"".join(s.iter_bytes()))
    return dict(client.get(f"/v1/steps/{resp.json()['step_id']}").json())


@when("I submit an llm_call of 3 tokens with a caller's traceparent and read it to the end")
def submit_traced(ctx: dict[str, Any]) -> None:
    """A Flow, a Run, and the Step with ``traceparent: 00-<trace>-<caller>-01``."""
    client = ctx["client"]
    flow = client.post("/v1/flows", json={"ast_ir": {"bdd": 1}}).json()
    run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
    ctx["step"] = _to_end(client, run_id, llm_step("o1", max_tokens=3),
                          {"traceparent": f"00-{TRACE_ID}-{CALLER}-01"})
    ctx["tree"].wait_for(lambda t: len(t.named("step llm_call")) == 1)


@when(parsers.parse('I read run "{run_id}" with a wrong token and correlation id "{cid}"'))
def wrong_token(ctx: dict[str, Any], run_id: str, cid: str) -> None:
    """``GET /v1/runs/{run_id}`` with ``Bearer <wrong>``."""
    ctx["resp"] = ctx["client"].get(f"/v1/runs/{run_id}", headers={
        "Authorization": f"Bearer {WRONG}", "X-Correlation-Id": cid})


@when(parsers.parse('I call the failing tool with correlation id "{cid}"'))
def call_failing(ctx: dict[str, Any], cid: str) -> None:
    """One ``tool_call`` read to its terminal frame."""
    ctx["step"] = _to_end(ctx["client"], ctx["run_id"], {
        "type": "tool_call", "client_token": "f1", "input": {"tool": "bad", "args": {}}},
        {"X-Correlation-Id": cid})


@then(parsers.parse('the trace goes from the caller to "{request}" to "{step}" to "{engine}"'))
def trace_chain(ctx: dict[str, Any], request: str, step: str, engine: str) -> None:
    """Each span is the previous one's child, all in the caller's trace."""
    tree = ctx["tree"]
    (req,) = [s for s in tree.named(request) if _ids(s)[2] == CALLER]
    (stp,) = tree.named(step)
    (eng,) = tree.named(engine)
    assert [_ids(s)[0] for s in (req, stp, eng)] == [TRACE_ID] * 3
    assert (_ids(stp)[2], _ids(eng)[2]) == (_ids(req)[1], _ids(stp)[1])
    ctx["engine_span"] = eng


@then("the engine call used as many output tokens as the Step's tokens_out")
def tokens_match(ctx: dict[str, Any]) -> None:
    """``gen_ai.usage.output_tokens`` is the Step's ``tokens_out`` (3)."""
    attrs = ctx["engine_span"].attributes
    assert (attrs["gen_ai.usage.output_tokens"], ctx["step"]["usage"]["tokens_out"]) == (3, 3)


@then(parsers.parse('the log has one request line for "{cid}" with route "{route}" and '
                    'status {status:d}'))
def request_line(ctx: dict[str, Any], cid: str, route: str, status: int) -> None:
    """The access line of that request, and the response echoes the id."""
    assert ctx["resp"].headers["x-correlation-id"] == cid
    (line,) = ctx["log"].where(correlation_id=cid)
    assert (line["event"], line["route"], line["status"]) == ("request", route, status)


@then("neither token appears in the log")
def no_token(ctx: dict[str, Any]) -> None:
    """Neither the presented token nor the configured one."""
    text = ctx["log"].text
    assert (WRONG in text, TOKEN in text) == (False, False)


@then(parsers.parse('the Step\'s lines under "{cid}" are admitted, running and terminal '
                    'failed with {code}'))
def transitions(ctx: dict[str, Any], cid: str, code: str) -> None:
    """Three lines with the Step's ids; the last names the status and the code."""
    lines = [(r["transition"], r.get("status"), r.get("error_code"), r["step_id"],
              r["run_id"]) for r in ctx["log"].where(correlation_id=cid)
             if r.get("logger") == "orchestrator.steps"]
    ids = (ctx["step"]["step_id"], ctx["run_id"])
    assert lines == [("admitted", None, None, *ids), ("running", None, None, *ids),
                     ("terminal", "failed", code, *ids)]
