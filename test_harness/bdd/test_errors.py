"""Typed errors for bad input, nothing partial stored (NERVE-4030, NERVE-4031)."""

from __future__ import annotations

import pathlib
import re
from typing import Any

from litestar.testing import TestClient
from pytest_bdd import parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.support import llm_step, table_counts

scenarios("errors.feature")


def _db(cfg: ServerConfig) -> pathlib.Path:
    return pathlib.Path(cfg.data_dir) / "orchestrator.db"


@when(parsers.parse("I send {request}"))
def send(client: TestClient[Any], mock_cfg: ServerConfig, ctx: dict[str, Any],
         request: str) -> None:
    """Send one kind of bad request."""
    run_id = ctx["run_id"]
    steps = f"/v1/runs/{run_id}/steps"
    flow_id = client.get(f"/v1/runs/{run_id}").json()["flow_id"]
    if request == "a step in a cancelled run":
        client.post(f"/v1/runs/{run_id}/cancel")
    ctx["counts"] = table_counts(_db(mock_cfg))
    match request:
        case "malformed JSON to POST /v1/flows":
            resp = client.post("/v1/flows", content=b'{"ast_ir": ',
                               headers={"content-type": "application/json"})
        case "an unknown step type":
            resp = client.post(steps, json={**llm_step("x"), "type": "llm_dance"})
        case "an unknown model":
            resp = client.post(steps, json=llm_step("x", model="hf:nobody/nothing"))
        case "an unknown run id":
            resp = client.post("/v1/runs/run_missing/steps", json=llm_step("x"))
        case "an unknown step id":
            resp = client.get("/v1/steps/stp_missing/stream")
        case "an unknown pool id":
            resp = client.get("/v1/pools/gpu-9")
        case "a run with an unknown mode":
            resp = client.post(f"/v1/flows/{flow_id}/runs", json={"mode": "rewind"})
        case "a replay run without replay_of":
            resp = client.post(f"/v1/flows/{flow_id}/runs", json={"mode": "replay"})
        case "an llm_call with both prompt and messages":
            body = llm_step("x")
            body["input"]["messages"] = [{"role": "user", "content": "hi"}]
            resp = client.post(steps, json=body)
        case "an llm_call with an empty messages list":
            body = llm_step("x")
            del body["input"]["prompt"]
            body["input"]["messages"] = []
            resp = client.post(steps, json=body)
        case "an llm_call with max_tokens 0":
            resp = client.post(steps, json=llm_step("x", max_tokens=0))
        case "a prompt larger than the context":
            resp = client.post(steps, json=llm_step("x", prompt="word " * 5000))
        case "a step pinned to an unknown pool":
            resp = client.post(steps, json={**llm_step("x"), "placement": {
                "strategy": "pin", "pool_id": "gpu-9"}})
        case "a step in a cancelled run":
            resp = client.post(steps, json=llm_step("x"))
        case "a body larger than the server's limit":
            resp = client.post("/v1/flows", json={"ast_ir": "x" * (mock_cfg.max_body_bytes + 1)})
        case "a client_token of 300 characters":
            resp = client.post(steps, json=llm_step("t" * 300))
        case "a flow with a label value of 2000 chars":
            resp = client.post("/v1/flows", json={"ast_ir": {}, "labels": {"k": "v" * 2000}})
        case "a run with a negative seed":
            resp = client.post(f"/v1/flows/{flow_id}/runs", json={"seed": -1})
        case 'a flow with a tool named "rm -rf /"':
            resp = client.post("/v1/flows", json={"ast_ir": {}, "tools": [
                {"name": "rm -rf /", "parameters": {}}]})
        case _:
            raise AssertionError(request)
    ctx["answers"].append(resp)


@then("the error body has exactly code, message and retriable (plus optional data)")
def envelope(ctx: dict[str, Any]) -> None:
    """The flat envelope."""
    body = ctx["answers"][-1].json()
    assert {"code", "message", "retriable"} <= set(body) <= {
        "code", "message", "retriable", "retry_after_ms", "data"}
    assert isinstance(body["message"], str) and body["message"]
    assert ctx["answers"][-1].headers["content-type"] == "application/json"


@then("no row was added to the store")
def nothing_stored(mock_cfg: ServerConfig, ctx: dict[str, Any]) -> None:
    """A refused request leaves the store as it was."""
    assert table_counts(_db(mock_cfg)) == ctx["counts"]


@when(parsers.parse('I make a request with X-Correlation-Id "{cid}"'))
def with_cid(client: TestClient[Any], ctx: dict[str, Any], cid: str) -> None:
    """A request that names its correlation id (on an error path)."""
    ctx["answers"].append(client.get("/v1/runs/run_missing",
                                     headers={"X-Correlation-Id": cid}))


@then(parsers.parse('the response carries X-Correlation-Id "{cid}"'))
def echoed(ctx: dict[str, Any], cid: str) -> None:
    """Echoed."""
    assert ctx["answers"][-1].headers["x-correlation-id"] == cid


@then("a request without one gets a generated UUID")
def generated(client: TestClient[Any]) -> None:
    """Generated as a UUIDv4."""
    cid = client.get("/health").headers["x-correlation-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        cid)


@when("I request a path that does not exist and a route with the wrong method")
def router_errors(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """404 from the router and 405 from the router."""
    ctx["answers"] += [client.get("/v2/nothing"), client.delete("/v1/flows")]


@then("both answers are typed errors with an X-Correlation-Id")
def router_typed(ctx: dict[str, Any]) -> None:
    """Same envelope and header as any other error."""
    a, b = ctx["answers"][-2:]
    assert (a.status_code, a.json()["code"]) == (404, "NOT_FOUND")
    assert (b.status_code, b.json()["code"]) == (405, "INVALID_PARAMS")
    assert all(len(r.headers["x-correlation-id"]) == 36 for r in (a, b))


@when(parsers.parse("I read a stream with Last-Event-ID {value}"))
def negative_last_event_id(client: TestClient[Any], ctx: dict[str, Any], value: str) -> None:
    """Run a step, then ask for its stream with a bad cursor."""
    sid = client.post(f"/v1/runs/{ctx['run_id']}/steps", json=llm_step("n-1")).json()["step_id"]
    ctx["answers"].append(client.get(f"/v1/steps/{sid}/stream",
                                     headers={"Last-Event-ID": value}))
