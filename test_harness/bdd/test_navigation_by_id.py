"""Checkpoints and Facts by id, tenant-isolated, and a Flow's Facts a page at a time
(NERVE-4074, NERVE-4075, NERVE-4051)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.facts import BUILTIN_FACT_SCHEMA
from orchestrator_core.config import ServerConfig
from test_harness.support import app_client

scenarios("navigation_by_id.feature")

UNKNOWN = {"checkpoint": "ckp_" + "0" * 32, "fact": "fct_" + "0" * 24}
"""Well-formed identifiers no object has."""


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(ctx: dict[str, Any], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["tokens"] = {a: ta, b: tb}


@given(parsers.parse('tenant "{tenant}" has a run with a fact and a checkpoint'))
def run_with_both(ctx: dict[str, Any], tenant: str) -> None:
    """One Fact and one Checkpoint in a new Run of a new Flow."""
    c, auth = ctx["client"], _as(ctx, tenant)
    flow = c.post("/v1/flows", json={"ast_ir": {"by_id": True}}, headers=auth).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={}, headers=auth).json()
    ctx["run_id"], ctx["flow_id"] = run["run_id"], flow["flow_id"]
    fact = c.post(f"/v1/runs/{run['run_id']}/facts", headers=auth,
                  json={"type": "seen", "schema_uri": BUILTIN_FACT_SCHEMA, "data": {"n": 1}})
    ckp = c.post(f"/v1/runs/{run['run_id']}/checkpoint", headers=auth,
                 json={"snapshot": {"pc": 3}})
    assert (fact.status_code, ckp.status_code) == (201, 201), (fact.text, ckp.text)
    ctx["ids"] = {"fact": fact.json()["fact_id"], "checkpoint": ckp.json()["checkpoint_id"]}


@when(parsers.parse('tenant "{tenant}" gets the checkpoint and the fact by id'))
def get_both(ctx: dict[str, Any], tenant: str) -> None:
    """One GET each."""
    c, auth = ctx["client"], _as(ctx, tenant)
    ctx["got"] = {"checkpoint": c.get(f"/v1/checkpoints/{ctx['ids']['checkpoint']}",
                                      headers=auth),
                  "fact": c.get(f"/v1/facts/{ctx['ids']['fact']}", headers=auth)}
    ctx["lists"] = {
        "checkpoint": c.get(f"/v1/runs/{ctx['run_id']}/checkpoints", headers=auth).json(),
        "fact": c.get(f"/v1/runs/{ctx['run_id']}/facts", headers=auth).json()}


@then("both answer 200 with the same objects as the run's checkpoint and fact lists")
def same_as_lists(ctx: dict[str, Any]) -> None:
    """The by-id answer is the list's item, field for field."""
    got = ctx["got"]
    assert (got["checkpoint"].status_code, [got["checkpoint"].json()]) == (
        200, ctx["lists"]["checkpoint"])
    assert (got["fact"].status_code, [got["fact"].json()]) == (200, ctx["lists"]["fact"])
    assert got["fact"].json()["data"] == {"n": 1}
    assert got["checkpoint"].json()["snapshot"] == {"pc": 3}


@when(parsers.parse('tenant "{tenant}" gets the {kind} of alpha by id and an unknown {kind2} '
                    'id'))
def get_foreign(ctx: dict[str, Any], tenant: str, kind: str, kind2: str) -> None:
    """Alpha's id and a never-issued one, both asked by the other tenant."""
    c, auth = ctx["client"], _as(ctx, tenant)
    path = "/v1/checkpoints/" if kind == "checkpoint" else "/v1/facts/"
    ctx["kind"] = kind
    ctx["foreign"] = c.get(path + ctx["ids"][kind], headers=auth)
    ctx["unknown"] = c.get(path + UNKNOWN[kind], headers=auth)


@then(parsers.parse("both answer 404 NOT_FOUND naming the id in data.{field}, alike but for "
                    "the id"))
def alike(ctx: dict[str, Any], field: str) -> None:
    """Nothing in the answer tells that alpha's id exists."""
    own, unknown = ctx["ids"][ctx["kind"]], UNKNOWN[ctx["kind"]]
    foreign, never = ctx["foreign"], ctx["unknown"]
    assert (foreign.status_code, never.status_code) == (404, 404)
    body = foreign.json()
    assert (body["code"], body["data"]) == ("NOT_FOUND", {field: own})
    assert msgspec.json.decode(foreign.content.replace(own.encode(), unknown.encode())) == \
        never.json()
    assert {k: v for k, v in foreign.headers.items() if k != "x-correlation-id"} == \
        {k: v for k, v in never.headers.items() if k != "x-correlation-id"}


@when(parsers.parse('tenant "{tenant}" appends {n:d} facts alternating between two runs of '
                    'one flow'))
def append_alternating(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """Fact i goes to the first Run when i is even, else to a second Run; its type is
    ``even`` or ``odd`` and its data ``{"i": i}``."""
    c, auth = ctx["client"], _as(ctx, tenant)
    second = c.post(f"/v1/flows/{ctx['flow_id']}/runs", json={}, headers=auth).json()
    runs = [ctx["run_id"], second["run_id"]]
    ctx["new_facts"] = []
    for i in range(n):
        resp = c.post(f"/v1/runs/{runs[i % 2]}/facts", headers=auth, json={
            "type": "odd" if i % 2 else "even", "schema_uri": BUILTIN_FACT_SCHEMA,
            "data": {"i": i}})
        assert resp.status_code == 201, resp.text
        ctx["new_facts"].append(resp.json()["fact_id"])


def _walk(ctx: dict[str, Any], tenant: str, url: str | None) -> None:
    """Follow ``rel="next"`` from ``url``; keep each page's fact ids and Link header."""
    ctx["pages"], ctx["links"] = [], []
    while url is not None and len(ctx["pages"]) < 20:
        resp = ctx["client"].get(url, headers=_as(ctx, tenant))
        assert resp.status_code == 200, resp.text
        ctx["pages"].append([fact["fact_id"] for fact in resp.json()])
        link = resp.headers.get("link")
        ctx["links"].append(link)
        found = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = found.group(1) if found else None


@when(parsers.parse('tenant "{tenant}" follows the flow\'s facts with limit {limit:d} through '
                    'its Link headers'))
def follow_facts(ctx: dict[str, Any], tenant: str, limit: int) -> None:
    """A client that only follows ``rel="next"``."""
    _walk(ctx, tenant, f"/v1/flows/{ctx['flow_id']}/facts?limit={limit}")


@when(parsers.parse('tenant "{tenant}" follows the flow\'s facts of type "{kind}" with limit '
                    '{limit:d} through its Link headers'))
def follow_typed_facts(ctx: dict[str, Any], tenant: str, kind: str, limit: int) -> None:
    """The filter is only in the first URL; the links must carry it on."""
    _walk(ctx, tenant, f"/v1/flows/{ctx['flow_id']}/facts?type={kind}&limit={limit}")


@then(parsers.parse("the pages hold 2, 2 and 2 facts, the run's first fact and the 5 new ones "
                    "in append order"))
def pages_in_order(ctx: dict[str, Any]) -> None:
    """Six Facts across two Runs, in the order they were appended."""
    every = [ctx["ids"]["fact"], *ctx["new_facts"]]
    assert ctx["pages"] == [every[0:2], every[2:4], every[4:6]]


@then("the last page has no Link header")
def last_without_link(ctx: dict[str, Any]) -> None:
    """The walk ends on the server's word."""
    assert ctx["links"][-1] is None
    assert all(link is not None for link in ctx["links"][:-1])


@then("the facts listed are the new facts 1 and 3, one a page")
def typed_pages(ctx: dict[str, Any]) -> None:
    """Only the ``odd`` Facts, each on its own page."""
    assert ctx["pages"] == [[ctx["new_facts"][1]], [ctx["new_facts"][3]]]


@when(parsers.parse('tenant "{tenant}" lists alpha\'s flow facts with "{query}"'))
def list_bad(ctx: dict[str, Any], tenant: str, query: str) -> None:
    """One request."""
    ctx["answer"] = ctx["client"].get(f"/v1/flows/{ctx['flow_id']}/facts?{query}",
                                      headers=_as(ctx, tenant))


@then(parsers.parse('the answer is {status:d} {code} with data.field "{field}"'))
def refused(ctx: dict[str, Any], status: int, code: str, field: str) -> None:
    """The typed refusal; a 404 names the Flow, not a parameter (``none``)."""
    body = ctx["answer"].json()
    assert (ctx["answer"].status_code, body["code"]) == (status, code)
    assert body["data"].get("field", "none") == field
