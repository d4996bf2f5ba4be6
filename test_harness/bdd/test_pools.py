"""Pools and placement (PLACE-5000, PLACE-5001)."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import TestClient
from pytest_bdd import given, parsers, scenarios, then, when

from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.support import MOCK_MODEL, llm_step, parse_sse

scenarios("pools.feature")


@given("the mock pool with 2 replicas of 4 slots")
def mock_pool(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """The default mock config."""
    ctx["answers"] = []


@when("I list the pools")
def list_pools(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """GET /v1/pools."""
    ctx["pools"] = client.get("/v1/pools").json()


@then("the pool mock-0 shows engine, version, build fingerprint, model sha256, slots and "
      "health")
def pool_shape(ctx: dict[str, Any]) -> None:
    """Discoverable capabilities."""
    (pool,) = ctx["pools"]
    assert pool["pool_id"] == "mock-0" and pool["kind"] == "cpu"
    assert pool["engine"]["name"] == "mock" and pool["engine"]["version"] == "1"
    assert pool["engine"]["build_fingerprint"].startswith("b3:")
    assert pool["models"][0]["sha256"] == "sha256:" + "0" * 64
    assert [(r["replica_id"], r["slots"], r["health"]) for r in pool["replicas"]] == [
        ("mock-0/r0", 4, "ready"), ("mock-0/r1", 4, "ready")]


def _placement(client: TestClient[Any], ctx: dict[str, Any], placement: Any) -> None:
    body = llm_step("p-1")
    if placement is not None:
        body["placement"] = placement
    _step, raw = run_to_end(client, new_run(client), body)
    started = next(f for f in parse_sse(raw) if f["event"] == "started")
    ctx["placement"] = json.loads(started["data"])["placement"]


@when("I run an llm_call with auto placement")
def run_auto(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """No placement given: the run's default, auto."""
    _placement(client, ctx, None)


@when(parsers.parse("I run an llm_call pinned to replica {replica}"))
def run_pinned(client: TestClient[Any], ctx: dict[str, Any], replica: str) -> None:
    """Pin to one replica."""
    _placement(client, ctx, {"strategy": "pin", "pool_id": "mock-0", "replica_id": replica})


@then(parsers.parse("it was placed on replica {replica} by strategy {strategy}"))
def placed(ctx: dict[str, Any], replica: str, strategy: str) -> None:
    """The started frame carries the placement decision."""
    assert (ctx["placement"]["replica_id"], ctx["placement"]["strategy"]) == (replica, strategy)
    assert ctx["placement"]["pool_id"] == "mock-0"


@when(parsers.parse("I submit an llm_call with affinity tags {tags}"))
def affinity(client: TestClient[Any], ctx: dict[str, Any], tags: str) -> None:
    """Affinity that no pool satisfies."""
    body = {**llm_step("a-1"), "placement": {"strategy": "affinity", "tags": json.loads(tags)}}
    ctx["answers"].append(client.post(f"/v1/runs/{new_run(client)}/steps", json=body))


@when("I read the capabilities")
def caps(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """GET /v1/capabilities."""
    ctx["caps"] = client.get("/v1/capabilities").json()


@then(parsers.parse('they list model "{model}" with its context size, features and the '
                    'server version'))
def caps_shape(ctx: dict[str, Any], model: str) -> None:
    """The client contract's capabilities()."""
    (m,) = ctx["caps"]["models"]
    assert (m["id"], m["context_tokens"], m["pools"]) == (MOCK_MODEL, 4096, ["mock-0"])
    assert "stream" in m["features"]
    assert ctx["caps"]["server_version"].startswith("orchestratord ")
    assert ctx["caps"]["limits"]["max_body_bytes"] > 0
