"""The Python clients, Client and AsyncClient, behave alike and retry nothing unless asked
(NERVE-4110, NERVE-4111, NERVE-4112)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.errors import QueueFull
from orchestrator_core.config import ServerConfig
from orchestratord.client import AsyncClient, Client, StepResult
from test_harness.support import MOCK_MODEL, app_client
from test_harness.unit.test_client_sync import bridge

scenarios("python_clients.feature")

BODY = {"type": "llm_call", "input": {"model": MOCK_MODEL, "prompt": "same code",
                                      "params": {"max_tokens": 3}}}


@pytest.fixture
def live(mock_cfg: ServerConfig) -> Iterator[Any]:
    """A live in-process server on the mock engine, as a transport handler."""
    with app_client(mock_cfg) as c:
        yield bridge(c)


@given("a server on the mock engine")
def mock_server(ctx: dict[str, Any], live: Any) -> None:
    """The handler goes into the scenario's context."""
    ctx["serve"] = live


@when("the same interpreter code runs two equal Steps through the blocking client and "
      "through the async client")
def same_code(ctx: dict[str, Any]) -> None:
    """Two submissions without client_token, in a new Run each, through each client."""
    with Client("http://o", transport=httpx.MockTransport(ctx["serve"])) as sc:
        run = sc.create_run(sc.create_flow({"bdd": "clients"}).flow_id, seed=3).run_id
        ctx["sync"] = [sc.run_step(run, BODY) for _ in range(2)]

    async def go() -> list[StepResult]:
        async with AsyncClient("http://o", transport=httpx.MockTransport(ctx["serve"])) as ac:
            flow = (await ac.create_flow({"bdd": "clients"})).flow_id
            run = (await ac.create_run(flow, seed=3)).run_id
            return [await ac.run_step(run, BODY) for _ in range(2)]

    ctx["async"] = anyio.run(go)


@then('both clients get the client_tokens "cli:<hash>:0" and "cli:<hash>:1"')
def tokens(ctx: dict[str, Any]) -> None:
    """Derived, never random: the same hash, counted per Run."""
    sync = [r.step.client_token for r in ctx["sync"]]
    key = sync[0].split(":")[1]
    assert (sync, [r.step.client_token for r in ctx["async"]]) == (
        [f"cli:{key}:0", f"cli:{key}:1"], [f"cli:{key}:0", f"cli:{key}:1"])


@then(parsers.parse('both get the frames "{events}" decoded into their contract Structs, '
                    "with the same output"))
def frames(ctx: dict[str, Any], events: str) -> None:
    """The same typed frames, payload Structs included, and the same output."""
    names = events.split(", ")
    for result in (*ctx["sync"], *ctx["async"]):
        assert [f.event for f in result.frames] == names
        assert [type(f.data).__name__ for f in result.frames] == [
            "StartedData", "TokenData", "TokenData", "TokenData", "EndData"]
    assert [_untimed(r) for r in ctx["sync"]] == [_untimed(r) for r in ctx["async"]]


def _untimed(result: StepResult) -> list[Any]:
    """The frames after ``started`` with the one wall-clock measure, ``decode_time_ms``,
    zeroed: it is timing, not output, and a slower store can move it by a millisecond
    (PG-9053)."""
    out: list[Any] = []
    for f in result.frames[1:]:
        prov = getattr(f.data, "provenance", None)
        out.append(msgspec.structs.replace(
            f.data, provenance=msgspec.structs.replace(prov, decode_time_ms=0))
            if prov is not None else f.data)
    return out


@given("a server that refuses its first request with a retriable QUEUE_FULL")
def flaky(ctx: dict[str, Any]) -> None:
    """A transport handler: 429 QUEUE_FULL (retry after 1 ms) first, then answers."""
    ctx["sent"] = []

    def serve(request: httpx.Request) -> httpx.Response:
        ctx["sent"].append(request.url.path)
        if len(ctx["sent"]) == 1:
            return httpx.Response(429, json={"code": "QUEUE_FULL", "message": "full",
                                             "retriable": True, "retry_after_ms": 1})
        return httpx.Response(200, json={"status": "ok", "server_version": "x"})

    ctx["serve"] = serve


def _attempt(ctx: dict[str, Any], max_retries: int, what: str) -> None:
    ctx["sent"].clear()
    with Client("http://o", max_retries=max_retries,
                transport=httpx.MockTransport(ctx["serve"])) as oc:
        try:
            ctx["answer"] = oc.health() if what == "health" else oc.create_run("flw_1")
        except QueueFull as exc:
            ctx["raised"] = exc


@when("the blocking client reads the server's health with its default options")
def default_health(ctx: dict[str, Any]) -> None:
    """``max_retries`` left at 0."""
    _attempt(ctx, 0, "health")


@when(parsers.parse("a client with max_retries {n:d} reads the server's health"))
def retried_health(ctx: dict[str, Any], n: int) -> None:
    """A GET is idempotent: it may be sent again."""
    ctx.pop("raised", None)
    flaky(ctx)
    _attempt(ctx, n, "health")


@when(parsers.parse("a client with max_retries {n:d} creates a Run"))
def retried_run(ctx: dict[str, Any], n: int) -> None:
    """A Run creation has no client_token: it must not be sent twice."""
    _attempt(ctx, n, "run")


@then(parsers.parse("it raises QUEUE_FULL after {n:d} request"))
def raised(ctx: dict[str, Any], n: int) -> None:
    """The typed error, after exactly ``n`` requests."""
    assert (ctx["raised"].code, len(ctx["sent"])) == ("QUEUE_FULL", n)


@then(parsers.parse('it answers "{status}" after {n:d} requests'))
def answered(ctx: dict[str, Any], status: str, n: int) -> None:
    """The answer of the last attempt, after exactly ``n`` requests."""
    assert ("raised" in ctx, ctx["answer"]["status"], len(ctx["sent"])) == (False, status, n)
