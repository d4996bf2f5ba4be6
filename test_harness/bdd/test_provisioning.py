"""Run-time provisioning and draining of remote replicas (PLACE-5100, PLACE-5101,
PLACE-5104, PLACE-5108, PLACE-5109)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig
from orchestrator_core.provision_policy import ProvisioningConfig
from test_harness.bdd.conftest import new_run
from test_harness.fake_llama import engine_servers
from test_harness.support import app_client, llm_step, parse_sse

scenarios("provisioning.feature")

TOKENS = {"ops": "t-ops", "alice": "t-alice"}


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Everything a scenario starts (fake engines, the app), closed at its end."""
    with contextlib.ExitStack() as scenario_stack:
        yield scenario_stack


def _as(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[tenant]}"}


@given("a remote pool on a fake llama-server and provisioning open to tenant ops")
def remote_pool(stack: contextlib.ExitStack, mock_cfg: ServerConfig,
                ctx: dict[str, Any]) -> None:
    """Pool ``remote-0`` with one configured replica; tenants ``ops`` (an operator) and
    ``alice``."""
    ctx["engines"] = stack.enter_context(engine_servers())
    url, _ = ctx["engines"]()
    pool = PoolConfig(pool_id="remote-0", engine="openai_http", urls=[url],
                      models=[ModelConfig(id="remote:fake", context_tokens=4096)],
                      options={"dialect": "llama-server"})
    cfg = msgspec.structs.replace(
        mock_cfg, pools=[*mock_cfg.pools, pool],
        auth_tokens={token: tenant for tenant, token in TOKENS.items()},
        provisioning=ProvisioningConfig(enabled=True, operator_tenants=["ops"]))
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["answers"] = []


@when(parsers.re(r"tenant (?P<tenant>\w+) provisions a second server with "
                 r"(?:the same build|build (?P<build>\S+)) into pool (?P<pool_id>\S+)$"))
def provision(ctx: dict[str, Any], tenant: str, build: str | None, pool_id: str) -> None:
    """``POST /v1/pools/provision`` of a new fake server."""
    url, _ = ctx["engines"](**({"build_info": build} if build else {}))
    ctx["answers"].append(ctx["client"].post(
        "/v1/pools/provision", json={"url": url, "pool_id": pool_id}, headers=_as(tenant)))


@when(parsers.parse("tenant {tenant} drains replica {replica} of pool {pool_id}"))
def drain(ctx: dict[str, Any], tenant: str, replica: str, pool_id: str) -> None:
    """``POST /v1/pools/{pool_id}/replicas/{replica}/drain``."""
    resp = ctx["client"].post(f"/v1/pools/{pool_id}/replicas/{replica}/drain",
                              headers=_as(tenant))
    assert (resp.status_code, resp.json()["health"]) == (202, "draining"), resp.text


def _pinned(ctx: dict[str, Any], replica_id: str) -> Any:
    client = ctx["client"]
    body = llm_step("p-1", model="remote:fake", max_tokens=2)
    body["placement"] = {"strategy": "pin", "pool_id": replica_id.split("/")[0],
                         "replica_id": replica_id}
    client.headers.update(_as("ops"))
    return client.post(f"/v1/runs/{new_run(client)}/steps", json=body)


@when(parsers.parse("I run an llm_call pinned to replica {replica_id}"))
def run_pinned(ctx: dict[str, Any], replica_id: str) -> None:
    """Submit, as ``ops``, and read the stream to its end."""
    step = _pinned(ctx, replica_id).json()
    with ctx["client"].stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
        ctx["frames"] = parse_sse(b"".join(s.iter_bytes()))


@then(parsers.parse("the answer is 201 and the step ended on replica {replica_id}"))
def ended_on(ctx: dict[str, Any], replica_id: str) -> None:
    """The provision answered 201; the Step's ``end`` names the replica."""
    assert ctx["answers"][-1].status_code == 201
    end = ctx["frames"][-1]
    assert (end["event"], json.loads(end["data"])["provenance"]["replica_id"]) == (
        "end", replica_id)


@then(parsers.parse('the answer is {status:d} with code {code} naming field "{field}"'))
def refused(ctx: dict[str, Any], status: int, code: str, field: str) -> None:
    """A typed refusal naming its field."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"]) == (
        status, code, field)


@then(parsers.parse("a step pinned to replica {replica_id} is refused with {status:d} "
                    "{code}"))
def pinned_refused(ctx: dict[str, Any], replica_id: str, status: int, code: str) -> None:
    """Placement skips a draining or removed replica."""
    resp = _pinned(ctx, replica_id)
    assert (resp.status_code, resp.json()["code"]) == (status, code)


def _replicas(ctx: dict[str, Any], pool_id: str) -> dict[str, str]:
    pool = ctx["client"].get(f"/v1/pools/{pool_id}", headers=_as("ops")).json()
    return {r["replica_id"]: r["health"] for r in pool["replicas"]}


@then(parsers.parse("pool {pool_id} lists replicas {replicas}"))
def lists(ctx: dict[str, Any], pool_id: str, replicas: str) -> None:
    """The pool's view now."""
    assert _replicas(ctx, pool_id) == json.loads(replicas)


@then(parsers.parse("pool {pool_id} soon lists replicas {replicas}"))
def soon_lists(ctx: dict[str, Any], pool_id: str, replicas: str) -> None:
    """The pool's view within 10 s."""
    deadline = time.monotonic() + 10
    while _replicas(ctx, pool_id) != json.loads(replicas) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _replicas(ctx, pool_id) == json.loads(replicas)
