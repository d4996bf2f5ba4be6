"""Interrupted engine streams, cancellation and breakers (STREAM-2005, STREAM-2002,
POLICY-3002); the breaker's reset runs on the server's injected clock, which the scenario
moves (NERVE-4060)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.clock import FakeClock
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
    assert ctx["frames"][-1]["event"] == "error"
    assert json.loads(ctx["frames"][-1]["data"])["code"] == "CANCELLED"
    step = ctx["http"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["status"] == "cancelled"


@then('the cancel of the live step answered 202 {"status": "cancelling"}')
def cancel_accepted(ctx: dict[str, Any]) -> None:
    """A cancel that finds the step live acknowledges the request, not a Step."""
    assert (ctx["cancel"].status_code, ctx["cancel"].json()) == (202, {"status": "cancelling"})


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


@given(parsers.parse("a Granian server with {hb:d} ms heartbeats and a {grace:d} ms reconnect "
                     "grace"))
def granian_server(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
                   ctx: dict[str, Any], hb: int, grace: int) -> None:
    """A real server; the mock engine streams 100 tokens/s for up to 3000 tokens."""
    import msgspec

    cfg = msgspec.structs.replace(with_options(mock_cfg, tokens_per_s=100, length=3000),
                                  heartbeat_ms=hb, disconnect_grace_ms=grace)
    _proc, url = stack.enter_context(server_process(cfg, tmp_path / "srv"))
    ctx["url"] = url
    ctx["http"] = stack.enter_context(httpx.Client(base_url=url, timeout=30.0))
    ctx["flow_id"] = ctx["http"].post("/v1/flows", json={"ast_ir": {"d": 1}}).json()["flow_id"]


def _read_then_drop(ctx: dict[str, Any], n: int, **run: Any) -> None:
    http: httpx.Client = ctx["http"]
    run_id = http.post(f"/v1/flows/{ctx['flow_id']}/runs", json=run).json()["run_id"]
    step = http.post(f"/v1/runs/{run_id}/steps",
                     json=llm_step("d-1", max_tokens=3000)).json()
    ctx["step"] = step
    raw = b""
    with httpx.Client(base_url=ctx["url"], timeout=30.0) as reader, \
            reader.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
        for chunk in s.iter_bytes():
            raw += chunk
            if raw.count(b"event: token") >= n:
                break  # leaving both contexts closes the TCP connection
    ctx["read"] = [f for f in parse_sse(raw.rsplit(b"\n\n", 1)[0] + b"\n\n")
                   if f["id"] is not None]


@when(parsers.parse("a reader disconnects after {n:d} token frames of a long step"))
def disconnect(ctx: dict[str, Any], n: int) -> None:
    """Close the connection mid-stream."""
    _read_then_drop(ctx, n)
    ctx["dropped_at"] = time.monotonic()


@when(parsers.parse("a reader of a run with cancel_on_disconnect false disconnects after "
                    "{n:d} token frames"))
def disconnect_keep(ctx: dict[str, Any], n: int) -> None:
    """The run opts out."""
    _read_then_drop(ctx, n, cancel_on_disconnect=False)


@then(parsers.parse('the step is cancelled within {s:d} seconds with reason "{reason}"'))
def cancelled_within(ctx: dict[str, Any], s: int, reason: str) -> None:
    """Detected on the next write (heartbeat or token), then the grace, then cancel."""
    http: httpx.Client = ctx["http"]
    step: dict[str, Any] = {}
    while time.monotonic() - ctx["dropped_at"] < s:
        step = http.get(f"/v1/steps/{ctx['step']['step_id']}").json()
        if step["status"] != "running":
            break
        time.sleep(0.05)
    assert (step["status"], step["error"]["code"], step["error"]["message"]) == (
        "cancelled", "CANCELLED", reason)


@then("the step is still running 1.5 seconds later")
def still_running(ctx: dict[str, Any]) -> None:
    """No cancel without the run's consent."""
    time.sleep(1.5)
    step = ctx["http"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["status"] == "running"
    ctx["http"].post(f"/v1/steps/{ctx['step']['step_id']}/cancel")


@when(parsers.parse("a reader disconnects after {n:d} token frames and resumes at once with "
                    "Last-Event-ID"))
def drop_and_resume(ctx: dict[str, Any], n: int) -> None:
    """Reconnect with the last id seen; cancel the step after a few more frames."""
    _read_then_drop(ctx, n)
    last = ctx["read"][-1]["id"]
    raw = b""
    http: httpx.Client = ctx["http"]
    with http.stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream",
                     headers={"Last-Event-ID": str(last)}) as s:
        for chunk in s.iter_bytes():
            raw += chunk
            if raw.count(b"event: token") >= 10 and "cancelled" not in ctx:
                ctx["cancelled"] = True
                http.post(f"/v1/steps/{ctx['step']['step_id']}/cancel")
    ctx["resumed"] = [f for f in parse_sse(raw) if f["id"] is not None]


@then("the resumed stream continues right after the last frame read until our own cancel")
def resumed(ctx: dict[str, Any]) -> None:
    """No repeat, no hole; the step was not cancelled by the short disconnect."""
    first = ctx["resumed"][0]["id"]
    assert first == ctx["read"][-1]["id"] + 1
    ids = [f["id"] for f in ctx["resumed"]]
    assert ids == list(range(first, first + len(ids)))
    err = json.loads(ctx["resumed"][-1]["data"])
    assert (ctx["resumed"][-1]["event"], err["message"]) == ("error", "step cancelled")


@given(parsers.parse("one mock replica that fails every request, with a breaker of {n:d} "
                     "failures and {ms:d} ms"))
def failing_replica(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], n: int,
                    ms: int) -> None:
    """An engine whose health a test can switch, on a server whose clock the test moves."""
    import msgspec

    from contracts.errors import EngineError as EngineErr
    from worker_adapters.base import CompletionRequest, StreamItem

    ctx["healthy"] = False
    base = default_handler()

    async def handler(req: CompletionRequest) -> AsyncIterator[StreamItem]:
        if not ctx["healthy"]:
            raise EngineErr("engine exploded", data={"test": True})
        async for item in base(req):
            yield item

    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        return MockEngine(handler)

    cfg = msgspec.structs.replace(mock_cfg, breaker_failures=n, breaker_reset_ms=ms,
                                  pools=[msgspec.structs.replace(mock_cfg.pools[0],
                                                                 replicas=1)])
    ctx["clock"] = FakeClock()
    ctx["client"] = stack.enter_context(app_client(cfg, engine_factory=factory,
                                                   clock=ctx["clock"]))
    ctx["run_id"] = new_run(ctx["client"])
    ctx["streams"] = []


@when(parsers.parse("I run {n:d} llm_calls"))
def run_n(ctx: dict[str, Any], n: int) -> None:
    """Sequential steps."""
    ctx["streams"] = []
    for _ in range(n):
        ctx["k"] = ctx.get("k", 0) + 1
        _step, raw = run_to_end(ctx["client"], ctx["run_id"], llm_step(f"b-{ctx['k']}"))
        ctx["streams"].append([f for f in parse_sse(raw) if f["id"] is not None])


@then("each ends with error ENGINE_ERROR and the third stream has an escalation closed to open")
def opened(ctx: dict[str, Any]) -> None:
    """The breaker opens on the third consecutive failure."""
    for frames in ctx["streams"]:
        assert json.loads(frames[-1]["data"])["code"] == "ENGINE_ERROR"
    assert [f["event"] for f in ctx["streams"][1]] == ["started", "error"]
    assert [f["event"] for f in ctx["streams"][2]] == ["started", "escalation", "error"]
    esc = json.loads(ctx["streams"][2][1]["data"])
    assert (esc["kind"], esc["target"], esc["from_state"], esc["to_state"], esc["failures"]) \
        == ("circuit_breaker", "mock-0/r0", "closed", "open", 3)


@then(parsers.parse("GET /v1/pools shows the replica's breaker {state}"))
def pools_breaker(ctx: dict[str, Any], state: str) -> None:
    """Visible to operators."""
    (rep,) = ctx["client"].get("/v1/pools").json()[0]["replicas"]
    assert rep["breaker"] == state


@then("a fourth llm_call is refused with 503 CIRCUIT_OPEN and a Retry-After")
def refused_open(ctx: dict[str, Any]) -> None:
    """Refused before anything is stored."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=llm_step("b-refused"))
    assert (resp.status_code, resp.json()["code"]) == (503, "CIRCUIT_OPEN")
    assert resp.headers["Retry-After"] == "1"


def _advance(ctx: dict[str, Any], ms: int) -> None:
    """Move the server's fake clock, on the server's event loop thread."""
    ctx["client"].blocking_portal.call(ctx["clock"].advance, ms / 1000.0)


@when(parsers.parse("the engine recovers and {ms:d} ms pass on the server's clock"))
def recovers(ctx: dict[str, Any], ms: int) -> None:
    """Switch the engine back on and move time, without waiting."""
    ctx["healthy"] = True
    _advance(ctx, ms)


@when(parsers.parse("{ms:d} more ms pass on the server's clock"))
def more_time(ctx: dict[str, Any], ms: int) -> None:
    """Move time again."""
    _advance(ctx, ms)


@then("its stream has escalations open to half_open and half_open to closed, then end")
def probed(ctx: dict[str, Any]) -> None:
    """The probe succeeded."""
    (frames,) = ctx["streams"]
    escalations = [json.loads(f["data"]) for f in frames if f["event"] == "escalation"]
    assert [(e["from_state"], e["to_state"]) for e in escalations] == [
        ("open", "half_open"), ("half_open", "closed")]
    assert frames[-1]["event"] == "end"
