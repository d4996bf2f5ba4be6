"""Navigation lists of Flows, Runs and Steps (NERVE-4061)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, llm_step

scenarios("navigation.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(ctx: dict[str, Any], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


def _walk(ctx: dict[str, Any], tenant: str, url: str | None, key: str) -> None:
    """Follow ``rel="next"`` from ``url``; keep each page's ids and Link header."""
    ctx["pages"], ctx["links"] = [], []
    while url is not None and len(ctx["pages"]) < 20:
        resp = ctx["client"].get(url, headers=_as(ctx, tenant))
        assert resp.status_code == 200, resp.text
        ctx["pages"].append([item[key] for item in resp.json()])
        ctx["items"] = [*(ctx["items"] if ctx["pages"][1:] else []), *resp.json()]
        link = resp.headers.get("link")
        ctx["links"].append(link)
        found = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = found.group(1) if found else None


def _new_flow(ctx: dict[str, Any], tenant: str, n: int) -> str:
    resp = ctx["client"].post("/v1/flows", json={"ast_ir": {"nav": n, "tenant": tenant}},
                              headers=_as(ctx, tenant))
    assert resp.status_code == 201, resp.text
    flow_id: str = resp.json()["flow_id"]
    return flow_id


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["tokens"] = {a: ta, b: tb}
    ctx["answers"] = []


@when(parsers.parse('tenant "{a}" creates {n:d} flows and tenant "{b}" creates {m:d} flows'))
def create_flows(ctx: dict[str, Any], a: str, n: int, b: str, m: int) -> None:
    """Interleaved, so a tenant's Flows are not contiguous in the store."""
    ctx["flows"] = {a: [], b: []}
    for i in range(max(n, m)):
        for tenant, count in ((a, n), (b, m)):
            if i < count:
                ctx["flows"][tenant].append(_new_flow(ctx, tenant, i))


@when(parsers.parse('tenant "{tenant}" follows GET /v1/flows with limit {limit:d} through its '
                    'Link headers'))
def follow_flows(ctx: dict[str, Any], tenant: str, limit: int) -> None:
    """A client that only follows ``rel="next"``."""
    _walk(ctx, tenant, f"/v1/flows?limit={limit}", "flow_id")


@then(parsers.parse("the pages hold {a:d}, {b:d} and {c:d} items, all of alpha's {n:d} flows "
                    "in creation order"))
def flow_pages(ctx: dict[str, Any], a: int, b: int, c: int, n: int) -> None:
    """[NERVE-4061] Every Flow once, oldest first, no other tenant's."""
    assert [len(p) for p in ctx["pages"]] == [a, b, c]
    assert [f for p in ctx["pages"] for f in p] == ctx["flows"]["alpha"]
    assert len(ctx["flows"]["alpha"]) == n


@then("the last page has no Link header")
def last_page(ctx: dict[str, Any]) -> None:
    """The end of the walk is explicit; every page before it links on."""
    assert ctx["links"][-1] is None
    assert all(link is not None for link in ctx["links"][:-1])


@then(parsers.parse('tenant "{tenant}" lists exactly its {n:d} flows'))
def own_flows(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """[NERVE-4051] Tenancy."""
    resp = ctx["client"].get("/v1/flows", headers=_as(ctx, tenant))
    assert [f["flow_id"] for f in resp.json()] == ctx["flows"][tenant]
    assert len(ctx["flows"][tenant]) == n
    assert "link" not in resp.headers


@when(parsers.parse('tenant "{tenant}" starts {n:d} runs of a flow, labelled team {teams}, '
                    'and cancels runs {x:d} and {y:d}'))
def start_runs(ctx: dict[str, Any], tenant: str, n: int, teams: str, x: int, y: int) -> None:
    """Runs with labels; two cancelled."""
    c, h = ctx["client"], _as(ctx, tenant)
    ctx["flow_id"] = flow_id = _new_flow(ctx, tenant, 0)
    labels = [t.strip() for t in teams.split(",")]
    assert len(labels) == n
    ctx["runs"] = [c.post(f"/v1/flows/{flow_id}/runs", headers=h,
                          json={"seed": i, "labels": {"team": t, "n": str(i)}}).json()["run_id"]
                   for i, t in enumerate(labels)]
    for i in (x, y):
        assert c.post(f"/v1/runs/{ctx['runs'][i]}/cancel", headers=h).status_code == 200


@when(parsers.parse('tenant "{tenant}" follows the flow\'s runs with "{query}" and limit '
                    '{limit:d} through its Link headers'))
def follow_runs(ctx: dict[str, Any], tenant: str, query: str, limit: int) -> None:
    """Filters ride along in every Link."""
    filters = "" if query == "(none)" else query + "&"
    _walk(ctx, tenant, f"/v1/flows/{ctx['flow_id']}/runs?{filters}limit={limit}", "run_id")


@then(parsers.parse("the runs listed are {indexes}"))
def runs_listed(ctx: dict[str, Any], indexes: str) -> None:
    """[NERVE-4061] Exactly the matching Runs, oldest first, one per page."""
    expected = [ctx["runs"][i] for i in json.loads(indexes)]
    assert [r for p in ctx["pages"] for r in p] == expected
    assert [len(p) for p in ctx["pages"]] == [1] * len(expected) or (
        expected == [] and ctx["pages"] == [[]])


@when(parsers.parse('tenant "{tenant}" submits {n:d} steps to a run'))
def submit_steps(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """Steps submitted one after another, each read to its end."""
    c, h = ctx["client"], _as(ctx, tenant)
    ctx["flow_id"] = flow_id = _new_flow(ctx, tenant, 1)
    ctx["run_id"] = run_id = c.post(f"/v1/flows/{flow_id}/runs", headers=h,
                                    json={"seed": 7}).json()["run_id"]
    ctx["steps"] = []
    for i in range(n):
        resp = c.post(f"/v1/runs/{run_id}/steps", json=llm_step(f"t{i}"), headers=h)
        assert resp.status_code == 201, resp.text
        ctx["steps"].append(resp.json()["step_id"])
        with c.stream("GET", f"/v1/steps/{ctx['steps'][-1]}/stream", headers=h) as s:
            b"".join(s.iter_bytes())


@when(parsers.parse('tenant "{tenant}" follows the run\'s steps with limit {limit:d} through '
                    'its Link headers'))
def follow_steps(ctx: dict[str, Any], tenant: str, limit: int) -> None:
    """A client rebuilding its position."""
    _walk(ctx, tenant, f"/v1/runs/{ctx['run_id']}/steps?limit={limit}", "step_id")


@then(parsers.parse("the pages hold {a:d}, {b:d} and {c:d} items, the {n:d} steps in "
                    "submission order with ordinals 0 to {last:d}"))
def step_pages(ctx: dict[str, Any], a: int, b: int, c: int, n: int, last: int) -> None:
    """[NERVE-4061] Submission order (ordinals 0..last: the tokens t0..t<last>), each
    Step once."""
    assert [len(p) for p in ctx["pages"]] == [a, b, c]
    assert [s for p in ctx["pages"] for s in p] == ctx["steps"]
    assert [s["client_token"] for s in ctx["items"]] == [f"t{i}" for i in range(last + 1)]
    assert len(ctx["steps"]) == n


def _without_id(resp: Any) -> tuple[int, dict[str, Any]]:
    body = resp.json()
    body["message"] = body["message"].rsplit(" ", 1)[0]
    body["data"] = sorted(body["data"])
    return resp.status_code, body


@then(parsers.parse('tenant "{tenant}" listing alpha\'s flow\'s runs and run\'s steps gets the '
                    'same 404 NOT_FOUND as for unknown ids'))
def foreign_lists(ctx: dict[str, Any], tenant: str) -> None:
    """[NERVE-4051] Indistinguishable from unknown ids."""
    c, h = ctx["client"], _as(ctx, tenant)
    for path, unknown in ((f"/v1/flows/{ctx['flow_id']}/runs", "/v1/flows/flw_nope/runs"),
                          (f"/v1/runs/{ctx['run_id']}/steps", "/v1/runs/run_nope/steps")):
        theirs, none = c.get(path, headers=h), c.get(unknown, headers=h)
        assert _without_id(theirs) == _without_id(none)
        assert theirs.json()["code"] == "NOT_FOUND"
        assert theirs.status_code == 404


@then(parsers.parse('tenant "{tenant}" paging its flows after alpha\'s flow is refused with '
                    '400 INVALID_PARAMS naming field "{field}"'))
def foreign_cursor(ctx: dict[str, Any], tenant: str, field: str) -> None:
    """An id of another tenant is no cursor."""
    resp = ctx["client"].get(f"/v1/flows?after={ctx['flow_id']}", headers=_as(ctx, tenant))
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        400, "INVALID_PARAMS", {"field": field})


@when(parsers.parse('tenant "{tenant}" GETs the {which} list with "{query}"'))
def bad_list(ctx: dict[str, Any], tenant: str, which: str, query: str) -> None:
    """A malformed list request."""
    path = {"flows": "/v1/flows", "runs": f"/v1/flows/{ctx['flow_id']}/runs",
            "steps": f"/v1/runs/{ctx['run_id']}/steps"}[which]
    ctx["answers"].append(ctx["client"].get(f"{path}?{query}", headers=_as(ctx, tenant)))


@then(parsers.parse('the list request is refused with 400 INVALID_PARAMS naming field '
                    '"{field}"'))
def bad_list_refused(ctx: dict[str, Any], field: str) -> None:
    """[NERVE-4061] Refused with the parameter named."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"]) == (
        400, "INVALID_PARAMS", field)
