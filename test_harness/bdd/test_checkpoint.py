"""Checkpoints and forks (NERVE-4005)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import app_client, llm_step, parse_sse

scenarios("checkpoint.feature")
ANY = "urn:orchestratord:schema:any-object"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _frames(raw: bytes) -> list[dict[str, Any]]:
    return [f for f in parse_sse(raw) if f["id"] is not None]


def _engine_requests(client: Any) -> int:
    return sum(r["requests"] for p in client.get("/v1/pools").json() for r in p["replicas"])


@given(parsers.parse('a record run with an llm_call "{a}", a fact, and a checkpoint step, '
                     'then an llm_call "{b}"'))
def parent(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], a: str,
           b: str) -> None:
    """The parent run's history."""
    ctx.update(cfg=mock_cfg, stack=stack, answers=[])
    c = ctx["client"] = stack.enter_context(app_client(mock_cfg))
    ctx["flow_id"] = c.post("/v1/flows", json={"ast_ir": {"ckp": 1}}).json()["flow_id"]
    run_id = ctx["run_id"] = c.post(f"/v1/flows/{ctx['flow_id']}/runs",
                                    json={"seed": 3}).json()["run_id"]
    ctx["a"] = run_to_end(c, run_id, llm_step(a, "first prompt"))
    c.post(f"/v1/runs/{run_id}/facts", json={"type": "seen", "schema_uri": ANY,
                                             "data": {"n": 1}})
    _step, raw = run_to_end(c, run_id, {"type": "checkpoint", "client_token": "ckp-1",
                                        "input": {"snapshot": {"pc": 2, "vars": {"x": 1}}}})
    ctx["ckp_frames"] = _frames(raw)
    c.post(f"/v1/runs/{run_id}/facts", json={"type": "seen", "schema_uri": ANY,
                                             "data": {"n": 2}})
    run_to_end(c, run_id, llm_step(b, "second prompt"))
    ctx["checkpoint_id"] = json.loads(ctx["ckp_frames"][-1]["data"])["output"]["checkpoint_id"]


@then("the checkpoint step's frames are started, checkpoint, end")
def ckp_frames(ctx: dict[str, Any]) -> None:
    """A durable checkpoint frame precedes end."""
    assert [f["event"] for f in ctx["ckp_frames"]] == ["started", "checkpoint", "end"]
    assert json.loads(ctx["ckp_frames"][1]["data"])["checkpoint_id"] == ctx["checkpoint_id"]


@then(parsers.parse('GET checkpoints lists it with steps_done {done} and facts high-water '
                    '{high:d}'))
def listed(ctx: dict[str, Any], done: str, high: int) -> None:
    """The server's cursor at the checkpoint."""
    (ckp,) = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/checkpoints").json()
    assert ckp["checkpoint_id"] == ctx["checkpoint_id"]
    assert ckp["snapshot"] == {"pc": 2, "vars": {"x": 1}}
    assert (ckp["cursor"]["steps_done"], ckp["cursor"]["facts_high_water"]) == (
        json.loads(done), high)
    assert ckp["hash"].startswith("b3:")


@when(parsers.parse("I post the checkpoint {snapshot} twice"))
def post_twice(ctx: dict[str, Any], snapshot: str) -> None:
    """Content addressing."""
    for _ in range(2):
        ctx["answers"].append(ctx["client"].post(f"/v1/runs/{ctx['run_id']}/checkpoint",
                                                 json={"snapshot": json.loads(snapshot)}))


@then("the answers are 201 then 200 with the same checkpoint_id")
def same_id(ctx: dict[str, Any]) -> None:
    """201 then 200."""
    a, b = ctx["answers"]
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json()["checkpoint_id"] == b.json()["checkpoint_id"]


@when("the server restarts on the same data directory")
def restart(ctx: dict[str, Any]) -> None:
    """Close and reopen the app on the same SQLite file."""
    ctx["stack"].close()
    ctx["client"] = ctx["stack"].enter_context(app_client(ctx["cfg"]))


@then("GET checkpoints still lists the checkpoint")
def still_listed(ctx: dict[str, Any]) -> None:
    """Durable."""
    ids = [c["checkpoint_id"] for c in
           ctx["client"].get(f"/v1/runs/{ctx['run_id']}/checkpoints").json()]
    assert ids == [ctx["checkpoint_id"]]


@when("I fork a run from the checkpoint")
def fork(ctx: dict[str, Any]) -> None:
    """from_checkpoint."""
    c = ctx["client"]
    ctx["parent_before"] = (c.get(f"/v1/runs/{ctx['run_id']}").json()["steps"],
                            c.get(f"/v1/runs/{ctx['run_id']}/facts").json())
    resp = c.post(f"/v1/flows/{ctx['flow_id']}/runs",
                  json={"from_checkpoint": ctx["checkpoint_id"]})
    assert resp.status_code == 201, resp.text
    ctx["fork"] = resp.json()


@then("the fork's lineage names the parent and the checkpoint, and the parent lists the fork")
def lineage(ctx: dict[str, Any]) -> None:
    """GET /v1/runs/{id} shows the lineage both ways."""
    c = ctx["client"]
    assert ctx["fork"]["lineage"] == {"parent_run_id": ctx["run_id"],
                                      "from_checkpoint": ctx["checkpoint_id"], "children": []}
    assert ctx["fork"]["seed"] == 3
    parent = c.get(f"/v1/runs/{ctx['run_id']}").json()
    assert parent["lineage"]["children"] == [ctx["fork"]["run_id"]]


@then("the fork has the parent's fact up to the checkpoint only")
def fork_facts(ctx: dict[str, Any]) -> None:
    """Facts after the checkpoint are not inherited."""
    facts = ctx["client"].get(f"/v1/runs/{ctx['fork']['run_id']}/facts").json()
    assert [(f["seq"], f["data"]) for f in facts] == [(0, {"n": 1})]


@then(parsers.parse('submitting "{a}" in the fork serves the parent\'s recorded frames '
                    'without the engine'))
def inherited(ctx: dict[str, Any], a: str) -> None:
    """Shared history."""
    c = ctx["client"]
    before = _engine_requests(c)
    _step, raw = run_to_end(c, ctx["fork"]["run_id"], llm_step(a, "first prompt"))
    assert raw == ctx["a"][1]
    assert _engine_requests(c) == before


@then(parsers.parse('submitting a new "{name}" in the fork runs on the engine'))
def diverges(ctx: dict[str, Any], name: str) -> None:
    """After the checkpoint the fork is its own run."""
    c = ctx["client"]
    before = _engine_requests(c)
    _step, raw = run_to_end(c, ctx["fork"]["run_id"], llm_step(name, "fork-only prompt"))
    assert _frames(raw)[-1]["event"] == "end"
    assert _engine_requests(c) == before + 1


@then("the parent run is unchanged")
def parent_unchanged(ctx: dict[str, Any]) -> None:
    """Non-destructive."""
    c = ctx["client"]
    assert (c.get(f"/v1/runs/{ctx['run_id']}").json()["steps"],
            c.get(f"/v1/runs/{ctx['run_id']}/facts").json()) == ctx["parent_before"]


@when("I fork a run of another flow from the checkpoint")
def fork_other(ctx: dict[str, Any]) -> None:
    """Wrong flow."""
    c = ctx["client"]
    other = c.post("/v1/flows", json={"ast_ir": {"other": 1}}).json()["flow_id"]
    ctx["answers"].append(c.post(f"/v1/flows/{other}/runs",
                                 json={"from_checkpoint": ctx["checkpoint_id"]}))
