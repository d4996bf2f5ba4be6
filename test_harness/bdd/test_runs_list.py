"""The tenant-wide list of Runs, ``GET /v1/runs`` (REC-7051)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client

scenarios("runs_list.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(ctx: dict[str, Any], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


def _flow(ctx: dict[str, Any], tenant: str, n: int) -> str:
    resp = ctx["client"].post("/v1/flows", json={"ast_ir": {"runs": n, "tenant": tenant}},
                              headers=_as(ctx, tenant))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["flow_id"])


def _run(ctx: dict[str, Any], tenant: str, flow_id: str, team: str) -> str:
    resp = ctx["client"].post(f"/v1/flows/{flow_id}/runs", json={"labels": {"team": team}},
                              headers=_as(ctx, tenant))
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["tokens"] = {a: ta, b: tb}
    ctx["runs"] = {}


@given(parsers.parse('tenant "{tenant}" starts runs 0 to 4 alternating between two flows, '
                     'labelled team a, b, a, b, a, cancelling runs 2 and 3'))
def alpha_runs(ctx: dict[str, Any], tenant: str) -> None:
    """Runs 0, 2, 4 of one Flow and 1, 3 of another."""
    flows = [_flow(ctx, tenant, 0), _flow(ctx, tenant, 1)]
    ctx["runs"][tenant] = [_run(ctx, tenant, flows[i % 2], "ababa"[i])
                           for i in range(5)]
    for i in (2, 3):
        resp = ctx["client"].post(f"/v1/runs/{ctx['runs'][tenant][i]}/cancel",
                                  headers=_as(ctx, tenant))
        assert resp.status_code == 200, resp.text


@given(parsers.parse('tenant "{tenant}" starts {n:d} runs of its own flow, labelled team a'))
def beta_runs(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """The other tenant's Runs, with a label alpha's filter would match."""
    flow = _flow(ctx, tenant, 0)
    ctx["runs"][tenant] = [_run(ctx, tenant, flow, "a") for _ in range(n)]


@when(parsers.parse('tenant "{tenant}" follows GET /v1/runs with "{query}" and limit '
                    '{limit:d} through its Link headers'))
def follow(ctx: dict[str, Any], tenant: str, query: str, limit: int) -> None:
    """A client that only follows ``rel="next"``."""
    url: str | None = "/v1/runs?" + ("" if query == "(none)" else query + "&") + \
        f"limit={limit}"
    ctx["listed"] = []
    while url is not None and len(ctx["listed"]) < 50:
        resp = ctx["client"].get(url, headers=_as(ctx, tenant))
        assert resp.status_code == 200, resp.text
        ctx["listed"] += [r["run_id"] for r in resp.json()]
        link = resp.headers.get("link")
        found = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = found.group(1) if found else None


@then(parsers.parse("the runs listed are {runs}, each exactly once"))
def listed(ctx: dict[str, Any], runs: str) -> None:
    """Alpha's Runs by their index, in creation order."""
    alpha = ctx["runs"]["alpha"]
    assert ctx["listed"] == [alpha[int(i)] for i in runs.strip("[]").split(", ") if i]


@then(parsers.parse('tenant "{tenant}" sees only its {n:d} runs'))
def only_own(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """Nothing of alpha's."""
    assert ctx["listed"] == ctx["runs"][tenant]
    assert len(ctx["listed"]) == n


@then(parsers.parse('tenant "{tenant}" paging after alpha\'s run 0 gets the same 400 as '
                    'after an unknown run, naming field "{field}"'))
def foreign_cursor(ctx: dict[str, Any], tenant: str, field: str) -> None:
    """Another tenant's run_id reads like an unknown one."""
    answers = [ctx["client"].get(f"/v1/runs?after={after}", headers=_as(ctx, tenant))
               for after in (ctx["runs"]["alpha"][0], "run_000000000000000000000000")]
    assert [(r.status_code, r.json()) for r in answers] == [
        (400, {"code": "INVALID_PARAMS", "message": "after must name a run of this tenant",
               "retriable": False, "data": {"field": field}})] * 2
