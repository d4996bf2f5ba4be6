"""Browsers reading Step streams with ``EventSource`` (STREAM-2012, NERVE-4053,
NERVE-4054)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.clock import FakeClock
from orchestrator_core.config import ServerConfig
from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.support import app_client, llm_step, parse_sse

scenarios("browsers.feature")


@when("a browser reads a Step's stream to its end frame")
def read_to_end(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Submit a Step and read its whole stream, as EventSource's first connection does."""
    step, raw = run_to_end(client, ctx["run_id"], llm_step("b-1", "hello"))
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    ctx["step_id"], ctx["raw"], ctx["last"] = step["step_id"], raw, frames[-1]
    assert frames[-1]["event"] == "end"


@then("reconnecting with Last-Event-ID at the end frame answers 204 with no body")
def reconnect_at_end(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """The reconnect EventSource makes after the stream closed gets 204 No Content."""
    resp = client.get(f"/v1/steps/{ctx['step_id']}/stream",
                      headers={"Last-Event-ID": str(ctx["last"]["id"])})
    assert (resp.status_code, resp.content) == (204, b"")


@then("reconnecting with Last-Event-ID before the end frame streams the end frame again")
def reconnect_before_end(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A reader that missed the end frame still gets it, with 200."""
    resp = client.get(f"/v1/steps/{ctx['step_id']}/stream",
                      headers={"Last-Event-ID": str(ctx["last"]["id"] - 1)})
    assert (resp.status_code, [f["event"] for f in parse_sse(resp.content)]) == (200, ["end"])


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the servers a scenario starts."""
    with ExitStack() as s:
        yield s


@given(parsers.parse('the server allows the origin "{origin}"'))
def allowing_server(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
                    ctx: dict[str, Any], origin: str) -> None:
    """A server of its own whose ``allowed_origins`` is that one origin, with a finished
    Step."""
    cfg = msgspec.structs.replace(mock_cfg, data_dir=str(tmp_path / "cors"),
                                  allowed_origins=[origin])
    c = ctx["cors_client"] = stack.enter_context(app_client(cfg))
    step, _raw = run_to_end(c, new_run(c), llm_step("cors-1", "hello"))
    ctx["cors_step"] = step["step_id"]


@when(parsers.parse('a page on "{origin}" reads a Step\'s stream'))
def page_reads(ctx: dict[str, Any], origin: str) -> None:
    """A cross-origin GET of the finished Step's stream, as EventSource sends it."""
    ctx["answer"] = ctx["cors_client"].get(f"/v1/steps/{ctx['cors_step']}/stream",
                                           headers={"Origin": origin})


@then(parsers.parse('the answer carries Access-Control-Allow-Origin "{origin}"'))
def allowed(ctx: dict[str, Any], origin: str) -> None:
    """The stream is readable by the page: the exact origin, varied on Origin."""
    resp = ctx["answer"]
    assert (resp.status_code, resp.headers.get("access-control-allow-origin"),
            resp.headers.get("vary")) == (200, origin, "Origin")


@then("the answer carries no CORS header")
def not_allowed(ctx: dict[str, Any]) -> None:
    """The same stream answers another origin with no CORS header at all."""
    resp = ctx["answer"]
    assert (resp.status_code, [k for k in resp.headers if k.startswith("access-control-")]) == (
        200, [])


@given(parsers.parse('a server with the token "{token}" and a finished Step of its tenant'))
def ticket_server(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
                  ctx: dict[str, Any], token: str) -> None:
    """A bearer-token server of its own on a fake clock, with one finished Step."""
    cfg = msgspec.structs.replace(mock_cfg, data_dir=str(tmp_path / "ticket"),
                                  auth_tokens={token: "alpha"})
    ctx["clock"] = clock = FakeClock()
    c = ctx["t_client"] = stack.enter_context(app_client(cfg, clock=clock))
    auth = ctx["auth"] = {"Authorization": f"Bearer {token}"}
    flow = c.post("/v1/flows", json={"ast_ir": {"ticket": 1}}, headers=auth).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"mode": "record", "seed": 1},
                 headers=auth).json()
    step = c.post(f"/v1/runs/{run['run_id']}/steps", json=llm_step("t-1", max_tokens=3),
                  headers=auth).json()
    ctx["t_step"] = step["step_id"]
    ctx["t_whole"] = c.get(f"/v1/steps/{step['step_id']}/stream", headers=auth).content


@when("the client asks a stream ticket for that Step")
def ask_ticket(ctx: dict[str, Any]) -> None:
    """``POST /v1/steps/{id}/stream-ticket`` with the bearer token."""
    resp = ctx["t_client"].post(f"/v1/steps/{ctx['t_step']}/stream-ticket",
                                headers=ctx["auth"])
    assert (resp.status_code, resp.json()["expires_in_ms"]) == (200, 60_000)
    ctx["ticket"] = resp.json()["ticket"]


@then("the Step's stream opens with the ticket and no Authorization header")
def open_with_ticket(ctx: dict[str, Any]) -> None:
    """The stream read through the ticket is the same bytes as with the token."""
    resp = ctx["t_client"].get(f"/v1/steps/{ctx['t_step']}/stream",
                               params={"ticket": ctx["ticket"]})
    assert (resp.status_code, resp.content) == (200, ctx["t_whole"])


@then("the ticket answers 401 once the server's clock is 60 s later")
def expired(ctx: dict[str, Any]) -> None:
    """An expired ticket is refused like a missing token."""
    c = ctx["t_client"]
    c.blocking_portal.call(ctx["clock"].advance, 60.0)
    resp = c.get(f"/v1/steps/{ctx['t_step']}/stream", params={"ticket": ctx["ticket"]})
    assert (resp.status_code, resp.json()["code"]) == (401, "UNAUTHORIZED")
