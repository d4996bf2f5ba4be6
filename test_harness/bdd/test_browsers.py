"""Browsers reading Step streams with ``EventSource`` (STREAM-2012)."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient
from pytest_bdd import scenarios, then, when

from test_harness.bdd.conftest import run_to_end
from test_harness.support import llm_step, parse_sse

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
