"""Checkpoints and forks (NERVE-4005)."""

from __future__ import annotations

import json
import pathlib
import re
import sqlite3
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.steps import StepStatus
from orchestrator_core.checkpoints import Checkpoints
from orchestrator_core.config import ServerConfig
from orchestrator_core.store import SCHEMA_VERSION, SqliteStore
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
    ctx.update(cfg=mock_cfg, stack=stack, answers=[], names=(a, b))
    ctx["client"] = stack.enter_context(app_client(mock_cfg))
    _record_parent(ctx, a, b)


def _record_parent(ctx: dict[str, Any], a: str, b: str) -> None:
    """Record ``a``, a fact, the checkpoint step ``ckp-1``, another fact and ``b``."""
    c = ctx["client"]
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


@then(parsers.parse("GET checkpoints lists it with steps high-water {high:d}, unfinished "
                    "{unfinished} and facts high-water {facts:d}"))
def listed(ctx: dict[str, Any], high: int, unfinished: str, facts: int) -> None:
    """[NERVE-4008] The server's cursor at the checkpoint: "a" (ordinal 0) had finished,
    the checkpoint step itself (ordinal 1) was running."""
    c = ctx["client"]
    (ckp,) = c.get(f"/v1/runs/{ctx['run_id']}/checkpoints").json()
    usage = c.get(f"/v1/steps/{ctx['a'][0]['step_id']}").json()["usage"]
    assert ckp["checkpoint_id"] == ctx["checkpoint_id"]
    assert ckp["snapshot"] == {"pc": 2, "vars": {"x": 1}}
    assert ckp["cursor"] == {
        "steps_high_water": high, "steps_unfinished": json.loads(unfinished),
        "usage": {k: usage[k] for k in ("tokens_in", "tokens_out", "cost_usd")},
        "facts_high_water": facts}
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


@then(parsers.parse('submitting "{name}", recorded after the checkpoint, in the fork runs on '
                    'the engine'))
def after_checkpoint(ctx: dict[str, Any], name: str) -> None:
    """[NERVE-4008] A parent Step above the checkpoint's high-water mark is not inherited."""
    c = ctx["client"]
    before = _engine_requests(c)
    step, raw = run_to_end(c, ctx["fork"]["run_id"], llm_step(name, "second prompt"))
    assert (_frames(raw)[-1]["event"], step["replay_of_step"]) == ("end", None)
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


def _cursor_before_v6(self: Checkpoints, run_id: str) -> dict[str, Any]:
    """``Checkpoints.cursor`` as it was before schema v6: every finished client_token."""
    store = self.store
    done = [r.client_token for r in store.list_steps(run_id)
            if StepStatus(r.status).terminal]
    usage = store.run_usage(run_id)
    facts = store.list_facts(run_id=run_id, limit=1_000_000)
    return {"steps_done": done,
            "usage": {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out,
                      "cost_usd": usage.cost_usd},
            "facts_high_water": facts[-1].seq if facts else -1}


@when("a schema v5 server records the same history, is upgraded, and I fork from its "
      "checkpoint")
def legacy_history(ctx: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent's history written the old way (v5 schema, steps_done cursor), then read by
    this server after the v6 migration."""
    cfg = msgspec.structs.replace(ctx["cfg"], data_dir=ctx["cfg"].data_dir + "-v5")
    ctx["stack"].close()
    with monkeypatch.context() as old_server:
        old_server.setattr(SqliteStore, "migrate_to", 5)
        old_server.setattr(SqliteStore, "record_engine_build", lambda self, f, s: None)
        old_server.setattr(Checkpoints, "cursor", _cursor_before_v6)
        with app_client(cfg) as client:
            ctx["client"] = client
            _record_parent(ctx, *ctx["names"])
    db = pathlib.Path(cfg.data_dir) / "orchestrator.db"
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (5,)
    ctx["db"] = db
    ctx["client"] = ctx["stack"].enter_context(app_client(cfg))
    fork(ctx)


@then(parsers.parse("the old checkpoint's cursor still lists steps_done {done} in a schema v6 "
                    "store"))
def legacy_cursor(ctx: dict[str, Any], done: str) -> None:
    """The stored checkpoint is unchanged by the migration (its hash covers its cursor)."""
    (ckp,) = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/checkpoints").json()
    assert (ckp["checkpoint_id"], ckp["cursor"]["steps_done"]) == (ctx["checkpoint_id"],
                                                                  json.loads(done))
    assert sqlite3.connect(ctx["db"]).execute("PRAGMA user_version").fetchone() == (
        SCHEMA_VERSION,)


def _checkpoint_now(c: Any, run_id: str, n: int) -> dict[str, Any]:
    resp = c.post(f"/v1/runs/{run_id}/checkpoint", json={"snapshot": {"after": n}})
    assert resp.status_code == 201, resp.text
    cursor: dict[str, Any] = resp.json()["cursor"]
    return cursor


@when(parsers.parse("I checkpoint a new run after {first:d} finished steps and again after "
                    "{second:d}"))
def grow(ctx: dict[str, Any], first: int, second: int) -> None:
    """A run of cheap gate steps, checkpointed twice as it grows."""
    c = ctx["client"]
    run_id = c.post(f"/v1/flows/{ctx['flow_id']}/runs", json={}).json()["run_id"]
    ctx["cursors"] = []
    for i in range(second):
        if i == first:
            ctx["cursors"].append(_checkpoint_now(c, run_id, i))
        _step, raw = run_to_end(c, run_id, {"type": "gate_eval", "client_token": f"g-{i}",
                                            "input": {"expression": "`true`"}})
        assert _frames(raw)[-1]["event"] == "end"
    ctx["cursors"].append(_checkpoint_now(c, run_id, second))


@then(parsers.parse("the cursors are {small} and {large} with zero usage"))
def cursors(ctx: dict[str, Any], small: str, large: str) -> None:
    """[NERVE-4008] A high-water mark and the unfinished Steps, never the finished ones."""
    zero = {"tokens_in": 0, "tokens_out": 0, "cost_usd": 0}
    assert ctx["cursors"] == [{**json.loads(small), "usage": zero},
                              {**json.loads(large), "usage": zero}]


@then(parsers.parse("the two cursors differ in length by {n:d} byte"))
def cursor_lengths(ctx: dict[str, Any], n: int) -> None:
    """Only the digits of the high-water mark grow."""
    small, large = (len(json.dumps(c, separators=(",", ":"))) for c in ctx["cursors"])
    assert large - small == n


@when(parsers.parse("I post {n:d} more checkpoints to the run"))
def post_more(ctx: dict[str, Any], n: int) -> None:
    """Distinct snapshots, so distinct checkpoints."""
    ctx["posted"] = [ctx["checkpoint_id"]] + [
        ctx["client"].post(f"/v1/runs/{ctx['run_id']}/checkpoint",
                           json={"snapshot": {"i": i}}).json()["checkpoint_id"]
        for i in range(n)]


@when(parsers.parse("I follow GET checkpoints with limit {limit:d} through its Link headers"))
def follow(ctx: dict[str, Any], limit: int) -> None:
    """A client that only follows ``rel="next"``."""
    url: str | None = f"/v1/runs/{ctx['run_id']}/checkpoints?limit={limit}"
    ctx["pages"], ctx["links"] = [], []
    while url is not None and len(ctx["pages"]) < 10:
        resp = ctx["client"].get(url)
        assert resp.status_code == 200, resp.text
        ctx["pages"].append([c["checkpoint_id"] for c in resp.json()])
        link = resp.headers.get("link")
        ctx["links"].append(link)
        found = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = found.group(1) if found else None


@then(parsers.parse("the pages hold {a:d}, {b:d} and {c:d} checkpoints, all {n:d} in creation "
                    "order, each once"))
def pages(ctx: dict[str, Any], a: int, b: int, c: int, n: int) -> None:
    """[NERVE-4008] The walk visits every checkpoint exactly once, oldest first."""
    assert [len(p) for p in ctx["pages"]] == [a, b, c]
    assert [i for p in ctx["pages"] for i in p] == ctx["posted"]
    assert len(ctx["posted"]) == n
    assert ctx["links"][0] == (f'</v1/runs/{ctx["run_id"]}/checkpoints?limit=3&after='
                               f'{ctx["pages"][0][-1]}>; rel="next"')


@then("the last page has no Link header")
def last_page(ctx: dict[str, Any]) -> None:
    """The end of the walk is explicit."""
    assert ctx["links"][-1] is None


@when(parsers.parse("I GET checkpoints with {query}"))
def bad_page(ctx: dict[str, Any], query: str) -> None:
    """A malformed page request."""
    ctx["answers"].append(ctx["client"].get(f"/v1/runs/{ctx['run_id']}/checkpoints?{query}"))


@then(parsers.parse('the page request is refused with 400 INVALID_PARAMS naming field '
                    '"{field}"'))
def bad_page_refused(ctx: dict[str, Any], field: str) -> None:
    """[NERVE-4008] Refused with the parameter named."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"]) == (
        400, "INVALID_PARAMS", field)


@when(parsers.parse("on a server recording values of at most {limit:d} bytes I post a "
                    "{size:d}-byte snapshot as a checkpoint and as a checkpoint step"))
def big_snapshot(ctx: dict[str, Any], limit: int, size: int) -> None:
    """The same oversized snapshot through both doors."""
    cfg = msgspec.structs.replace(ctx["cfg"], max_recorded_value_bytes=limit,
                                  data_dir=ctx["cfg"].data_dir + "-small")
    c = ctx["client"] = ctx["stack"].enter_context(app_client(cfg))
    flow_id = c.post("/v1/flows", json={"ast_ir": {"small": 1}}).json()["flow_id"]
    run_id = ctx["small_run"] = c.post(f"/v1/flows/{flow_id}/runs", json={}).json()["run_id"]
    snapshot = {"blob": "z" * (size - 11)}
    ctx["answers"] += [
        c.post(f"/v1/runs/{run_id}/checkpoint", json={"snapshot": snapshot}),
        c.post(f"/v1/runs/{run_id}/steps", json={"type": "checkpoint", "client_token": "big",
                                                 "input": {"snapshot": snapshot}})]


@then(parsers.parse('both answers are 400 INVALID_PARAMS naming "{first}" and "{second}" with '
                    'limit_bytes {limit:d}'))
def big_refused(ctx: dict[str, Any], first: str, second: str, limit: int) -> None:
    """[POLICY-3030] A typed 4xx naming the field, before anything is stored."""
    assert [(r.status_code, r.json()["code"], r.json()["data"]) for r in ctx["answers"]] == [
        (400, "INVALID_PARAMS", {"field": f, "reason": "size", "limit_bytes": limit})
        for f in (first, second)]


@then("that run has no checkpoint and no step")
def nothing_stored(ctx: dict[str, Any]) -> None:
    """NERVE-4031: a refusal leaves nothing behind."""
    c, run_id = ctx["client"], ctx["small_run"]
    assert c.get(f"/v1/runs/{run_id}/checkpoints").json() == []
    assert c.get(f"/v1/runs/{run_id}").json()["steps"] == {}
