"""Authentication and tenancy (NERVE-4050, NERVE-4051)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, llm_step

scenarios("auth.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["tokens"] = {a: ta, b: tb}
    ctx["answers"] = []


@when(parsers.parse("I call GET /v1/pools with {auth}"))
def call(ctx: dict[str, Any], auth: str) -> None:
    """One request with the given credential."""
    headers = {}
    if auth.startswith("the token"):
        headers = _as(auth.split('"')[1])
    elif auth == "a Basic credential":
        headers = {"Authorization": "Basic dG9rLWE6"}
    ctx["answers"].append(ctx["client"].get("/v1/pools", headers=headers))


@then("the answer asks for a Bearer token")
def challenge(ctx: dict[str, Any]) -> None:
    """RFC 6750 challenge."""
    assert ctx["answers"][-1].headers["WWW-Authenticate"].startswith("Bearer")


@then("GET /health and GET /ready answer 200 without a token")
def public(ctx: dict[str, Any]) -> None:
    """Probes stay open."""
    assert ctx["client"].get("/health").status_code == 200
    assert ctx["client"].get("/ready").status_code == 200


@given(parsers.parse('tenant "{tenant}" has a flow, a run and a finished step'))
def alpha_objects(ctx: dict[str, Any], tenant: str) -> None:
    """Objects owned by one tenant."""
    c, h = ctx["client"], _as(ctx["tokens"][tenant])
    flow = c.post("/v1/flows", json={"ast_ir": {"secret": 1}}, headers=h).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={}, headers=h).json()
    step = c.post(f"/v1/runs/{run['run_id']}/steps", json=llm_step("s-1"), headers=h).json()
    with c.stream("GET", f"/v1/steps/{step['step_id']}/stream", headers=h) as s:
        b"".join(s.iter_bytes())
    ctx["owned"] = {"flow": flow, "run": run, "step": step}


def _paths(ctx: dict[str, Any]) -> list[tuple[str, str]]:
    o = ctx["owned"]
    fid, h, rid, sid = (o["flow"]["flow_id"], o["flow"]["hash"], o["run"]["run_id"],
                        o["step"]["step_id"])
    return [("GET", f"/v1/flows/{fid}"), ("GET", f"/v1/flows:by-hash/{h}"),
            ("POST", f"/v1/flows/{fid}/runs"), ("GET", f"/v1/runs/{rid}"),
            ("POST", f"/v1/runs/{rid}/cancel"), ("POST", f"/v1/runs/{rid}/steps"),
            ("GET", f"/v1/steps/{sid}"), ("GET", f"/v1/steps/{sid}/stream"),
            ("POST", f"/v1/steps/{sid}/cancel")]


@then(parsers.parse('tenant "{tenant}" gets 404 NOT_FOUND for each of them, by id, by hash, '
                    'stream and cancel'))
def isolated(ctx: dict[str, Any], tenant: str) -> None:
    """404, not 403: existence does not leak."""
    c, h = ctx["client"], _as(ctx["tokens"][tenant])
    for method, path in _paths(ctx):
        body = llm_step("x") if path.endswith("/steps") else {}
        resp = c.request(method, path, headers=h, json=body if method == "POST" else None)
        assert (method, path, resp.status_code, resp.json()["code"]) == (
            method, path, 404, "NOT_FOUND")


@then(parsers.parse('tenant "{tenant}" cannot start a replay of alpha\'s run'))
def no_foreign_replay(ctx: dict[str, Any], tenant: str) -> None:
    """replay_of is resolved within the caller's tenant."""
    c, h = ctx["client"], _as(ctx["tokens"][tenant])
    flow = c.post("/v1/flows", json={"ast_ir": {"secret": 1}}, headers=h).json()
    resp = c.post(f"/v1/flows/{flow['flow_id']}/runs", headers=h,
                  json={"mode": "replay", "replay_of": ctx["owned"]["run"]["run_id"]})
    assert (resp.status_code, resp.json()["code"]) == (404, "NOT_FOUND")


@then(parsers.parse('tenant "{tenant}" posting the same flow content gets its own new flow'))
def own_flow(ctx: dict[str, Any], tenant: str) -> None:
    """Same content, same hash, another id; 201 shows nothing about other tenants."""
    resp = ctx["client"].post("/v1/flows", json={"ast_ir": {"secret": 1}},
                              headers=_as(ctx["tokens"][tenant]))
    assert resp.status_code in (200, 201)
    assert resp.json()["hash"] == ctx["owned"]["flow"]["hash"]
    assert resp.json()["flow_id"] != ctx["owned"]["flow"]["flow_id"]


@then(parsers.parse('tenant "{tenant}" still reads all of them'))
def owner_reads(ctx: dict[str, Any], tenant: str) -> None:
    """The owner is unaffected."""
    c, h = ctx["client"], _as(ctx["tokens"][tenant])
    for method, path in _paths(ctx):
        if method == "GET":
            assert c.get(path, headers=h).status_code == 200, path


@when("I start orchestratord serve --host 0.0.0.0 with no tokens configured")
def start_public(ctx: dict[str, Any]) -> None:
    """The process must refuse before it binds."""
    ctx["proc"] = subprocess.run(
        [sys.executable, "-m", "orchestratord", "serve", "--mock", "--host", "0.0.0.0",
         "--port", "1"], capture_output=True, text=True, timeout=60, check=False)


@then("it exits with an error naming auth_tokens before listening")
def refused(ctx: dict[str, Any]) -> None:
    """Exit status 1 with the reason on stderr."""
    proc = ctx["proc"]
    assert proc.returncode == 1
    assert "auth_tokens" in proc.stderr and "0.0.0.0" in proc.stderr
