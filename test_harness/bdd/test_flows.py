"""Flows are content-addressed (NERVE-4001)."""

from __future__ import annotations

import json
from typing import Any

from litestar.testing import TestClient
from pytest_bdd import given, parsers, scenarios, then, when

scenarios("flows.feature")


@given(parsers.parse("a flow body {body}"))
def flow_body(ctx: dict[str, Any], body: str) -> None:
    """Remember a flow body."""
    ctx["body"] = json.loads(body)
    ctx["answers"] = []


@when("I post it")
def post_it(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """POST the remembered body."""
    ctx["answers"].append(client.post("/v1/flows", json=ctx["body"]))


@when(parsers.parse("I post the body {body}"))
def post_body(client: TestClient[Any], ctx: dict[str, Any], body: str) -> None:
    """POST another body."""
    ctx["answers"].append(client.post("/v1/flows", json=json.loads(body)))


@then("the first answer is 201 and the second is 200")
def created_then_ok(ctx: dict[str, Any]) -> None:
    """First creation, then recognition."""
    assert [a.status_code for a in ctx["answers"]] == [201, 200]
    assert [a.json()["created"] for a in ctx["answers"]] == [True, False]


@then("both answers carry the same flow_id and hash")
def same_identity(ctx: dict[str, Any]) -> None:
    """Identity does not depend on key order or labels."""
    a, b = (r.json() for r in ctx["answers"])
    assert (a["flow_id"], a["hash"]) == (b["flow_id"], b["hash"])
    assert a["hash"].startswith("b3:") and len(a["hash"]) == 3 + 64


@then("the two answers carry different flow_ids and hashes")
def different_identity(ctx: dict[str, Any]) -> None:
    """Any content change makes a new flow."""
    a, b = (r.json() for r in ctx["answers"])
    assert a["flow_id"] != b["flow_id"] and a["hash"] != b["hash"]
    assert [r.status_code for r in ctx["answers"]] == [201, 201]


@then("GET /v1/flows/{flow_id} and GET /v1/flows:by-hash/{hash} return it")
def read_back(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Both lookups return the stored flow."""
    created = ctx["answers"][0].json()
    by_id = client.get(f"/v1/flows/{created['flow_id']}").json()
    by_hash = client.get(f"/v1/flows:by-hash/{created['hash']}").json()
    assert by_id == by_hash
    assert by_id["ast_ir"] == {"steps": ["a"]}
    assert (by_id["flow_id"], by_id["hash"]) == (created["flow_id"], created["hash"])
