"""Steps shared by several features."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient
from pytest_bdd import given, parsers, then

from test_harness.support import llm_step


def new_run(client: TestClient[Any], **run: Any) -> str:
    """Create a flow and a run of it; return the run_id."""
    flow = client.post("/v1/flows", json={"ast_ir": {"demo": True}}).json()
    resp = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7, **run})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def run_to_end(client: TestClient[Any], run_id: str, body: dict[str, Any]) -> \
        tuple[dict[str, Any], bytes]:
    """Submit a step and read its whole stream; return (step json, raw SSE bytes)."""
    resp = client.post(f"/v1/runs/{run_id}/steps", json=body)
    assert resp.status_code in (200, 201), resp.text
    step = resp.json()
    with client.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
        raw = b"".join(s.iter_bytes())
    return step, raw


@given("a record run on the mock engine")
def record_run(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A fresh flow and a record-mode run."""
    ctx["run_id"] = new_run(client)
    ctx["answers"] = []


@then(parsers.parse("the answer is {status:d} with code {code}"))
def answer_is(ctx: dict[str, Any], status: int, code: str) -> None:
    """The last HTTP answer has this status and error code."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"]) == (status, code), resp.text


@then(parsers.re(r'the refusal names field "(?P<field>[^"]+)" at path "(?P<path>[^"]*)"$'))
def refusal_names(ctx: dict[str, Any], field: str, path: str) -> None:
    """The last answer is a 400 naming the request field and the place inside it."""
    resp = ctx["answers"][-1]
    assert resp.status_code == 400, resp.text
    assert (resp.json()["data"]["field"], resp.json()["data"]["path"]) == (field, path)


__all__ = ["llm_step", "new_run", "run_to_end"]
