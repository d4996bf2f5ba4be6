"""Interrupted engine streams and cancellation (STREAM-2005, STREAM-2002)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import PoolConfig, ServerConfig
from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.conftest import with_options
from test_harness.support import app_client, llm_step, parse_sse, server_process
from worker_adapters.base import EngineAdapter
from worker_adapters.mock import MockEngine, default_handler

scenarios("engine_faults.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _start(stack: ExitStack, cfg: ServerConfig, ctx: dict[str, Any], **handler: Any) -> None:
    engines: list[MockEngine] = []

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        eng = MockEngine(default_handler(**handler))
        engines.append(eng)
        return eng

    ctx["engines"] = engines
    ctx["client"] = stack.enter_context(app_client(cfg, engine_factory=factory))
    ctx["run_id"] = new_run(ctx["client"])


@given(parsers.parse("a mock engine that stops after {n:d} tokens without finishing"))
def failing(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], n: int) -> None:
    """The engine closes its stream with no finish_reason."""
    _start(stack, mock_cfg, ctx, fail_after=n, length=50)


@when("I run an llm_call to completion on it")
def run_it(ctx: dict[str, Any]) -> None:
    """Submit and read to the end."""
    step, raw = run_to_end(ctx["client"], ctx["run_id"], llm_step("f-1", max_tokens=100))
    ctx["step"], ctx["frames"] = step, [f for f in parse_sse(raw) if f["id"] is not None]


@then(parsers.parse("the stream ends with error INTERRUPTED after {n:d} token frames"))
def interrupted(ctx: dict[str, Any], n: int) -> None:
    """Never a success."""
    events = [f["event"] for f in ctx["frames"]]
    assert events == ["started"] + ["token"] * n + ["error"]
    assert json.loads(ctx["frames"][-1]["data"])["code"] == "INTERRUPTED"


@then(parsers.parse("the step status is {status}"))
def status(ctx: dict[str, Any], status: str) -> None:
    """Terminal status matches the frame."""
    step = ctx["client"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["status"] == status
    assert step["error"]["code"] == "INTERRUPTED"


@given(parsers.parse("a slow mock engine at {rate:d} tokens per second"))
def slow(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
         ctx: dict[str, Any], rate: int) -> None:
    """A real Granian server (true streaming) whose mock engine decodes slowly."""
    cfg = with_options(mock_cfg, tokens_per_s=rate)
    _proc, url = stack.enter_context(server_process(cfg, tmp_path / "srv"))
    http = stack.enter_context(httpx.Client(base_url=url, timeout=30.0))
    ctx["http"] = http
    flow = http.post("/v1/flows", json={"ast_ir": {"cancel": True}}).json()
    ctx["run_id"] = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]


@when(parsers.parse("I start an llm_call and cancel it after {n:d} token frames"))
def cancel_mid(ctx: dict[str, Any], n: int) -> None:
    """Read the stream; cancel once n tokens have arrived; read on to the end."""
    http: httpx.Client = ctx["http"]
    step = http.post(f"/v1/runs/{ctx['run_id']}/steps",
                     json=llm_step("c-1", "a long story", max_tokens=2000)).json()
    ctx["step"] = step
    raw = b""
    with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
        for chunk in s.iter_bytes():
            raw += chunk
            if raw.count(b"event: token") >= n and "cancel" not in ctx:
                ctx["cancel"] = http.post(f"/v1/steps/{step['step_id']}/cancel")
    ctx["frames"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then("the stream ends with error CANCELLED")
def cancelled(ctx: dict[str, Any]) -> None:
    """The terminal frame is CANCELLED and the step is cancelled."""
    assert ctx["cancel"].status_code == 200
    assert ctx["frames"][-1]["event"] == "error"
    assert json.loads(ctx["frames"][-1]["data"])["code"] == "CANCELLED"
    step = ctx["http"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["status"] == "cancelled"


@then("no token frame follows the cancel")
def nothing_after(ctx: dict[str, Any]) -> None:
    """The engine stopped: it generated exactly the tokens the log holds, and no more
    arrive later."""
    tokens = sum(1 for f in ctx["frames"] if f["event"] == "token")
    assert 5 <= tokens < 2000
    time.sleep(0.2)
    replicas = ctx["http"].get("/v1/pools").json()[0]["replicas"]
    assert sum(r["tokens_generated"] for r in replicas) == tokens
    assert sum(r["requests"] for r in replicas) == 1


@then("cancelling again changes nothing")
def cancel_again(ctx: dict[str, Any]) -> None:
    """Idempotent cancel on a finished step."""
    http: httpx.Client = ctx["http"]
    before = http.get(f"/v1/steps/{ctx['step']['step_id']}").json()
    again = http.post(f"/v1/steps/{ctx['step']['step_id']}/cancel")
    assert again.status_code == 200 and again.json() == before
