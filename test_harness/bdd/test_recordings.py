"""Portable recordings: export, import into any server, replay (REC-7000, REC-7006,
REC-7007, REC-7010..REC-7013)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.facts import BUILTIN_FACT_SCHEMA
from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, llm_step, table_counts

scenarios("recordings.feature")

NDJSON = {"content-type": "application/x-ndjson"}
PROMPTS = ["first prompt", "second prompt", "third prompt"]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's apps at teardown."""
    with ExitStack() as s:
        yield s


def _as(ctx: dict[str, Any], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


def _stream(client: Any, step_id: str, auth: dict[str, str]) -> bytes:
    """The Step's stream without what is not in its log: a live read may also carry an
    ephemeral ``metrics`` frame (no id) or a keep-alive comment when the machine or the
    store is slow (PG-9053); the durable frames are what a replay must give byte for byte."""
    with client.stream("GET", f"/v1/steps/{step_id}/stream", headers=auth) as s:
        raw = b"".join(s.iter_bytes())
    return b"".join(block + b"\n\n" for block in raw.split(b"\n\n")
                    if block.startswith(b"id: "))


def _replay(client: Any, auth: dict[str, str], imported: dict[str, Any],
            tokens: list[str]) -> dict[str, bytes]:
    """A replay Run of an imported Run: each token's stream."""
    run = client.post(f"/v1/flows/{imported['flow_id']}/runs", headers=auth,
                      json={"mode": "replay", "replay_of": imported["run_id"]})
    assert run.status_code == 201, run.text
    out = {}
    for token, prompt in zip(tokens, PROMPTS, strict=True):
        step = client.post(f"/v1/runs/{run.json()['run_id']}/steps", headers=auth,
                           json=llm_step(token, prompt))
        assert step.status_code == 201, step.text
        out[token] = _stream(client, step.json()["step_id"], auth)
    return out


@given(parsers.parse('a mock-engine server with tokens "{ta}" for tenant "{a}" and "{tb}" '
                     'for tenant "{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants on the mock engine."""
    cfg = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b, "tok-g": "gamma"})
    ctx["client"] = stack.enter_context(app_client(cfg))
    ctx["tokens"] = {a: ta, b: tb, "gamma": "tok-g"}
    ctx["db"] = pathlib.Path(cfg.data_dir) / "orchestrator.db"


@given(parsers.parse('tenant "{tenant}" recorded a run of 3 llm_call steps, a fact and a '
                     'checkpoint'))
def recorded(ctx: dict[str, Any], tenant: str) -> None:
    """Three Steps, one Fact, one checkpoint; the original streams are kept."""
    c, auth = ctx["client"], _as(ctx, tenant)
    flow = c.post("/v1/flows", json={"ast_ir": {"recordings": True}}, headers=auth).json()
    run = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 11}, headers=auth).json()
    ctx["run_id"], ctx["tokens_used"], ctx["original"] = run["run_id"], [], {}
    for i, prompt in enumerate(PROMPTS):
        step = c.post(f"/v1/runs/{run['run_id']}/steps", headers=auth,
                      json=llm_step(f"call-{i}", prompt)).json()
        ctx["original"][f"call-{i}"] = _stream(c, step["step_id"], auth)
        ctx["tokens_used"].append(f"call-{i}")
    fact = c.post(f"/v1/runs/{run['run_id']}/facts", headers=auth,
                  json={"type": "seen", "schema_uri": BUILTIN_FACT_SCHEMA, "data": {"n": 1}})
    ckp = c.post(f"/v1/runs/{run['run_id']}/checkpoint", headers=auth,
                 json={"snapshot": {"pc": 3}})
    assert (fact.status_code, ckp.status_code) == (201, 201), (fact.text, ckp.text)
    ctx["checkpoint_id"] = ckp.json()["checkpoint_id"]


@given(parsers.parse('tenant "{tenant}" exported the run'))
def exported(ctx: dict[str, Any], tenant: str) -> None:
    """The recording's bytes."""
    resp = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/recording", headers=_as(ctx, tenant))
    assert resp.status_code == 200, resp.text
    ctx["file"] = resp.content


@when(parsers.parse('tenant "{tenant}" exports the run twice'))
def export_twice(ctx: dict[str, Any], tenant: str) -> None:
    """Two exports."""
    ctx["exports"] = [ctx["client"].get(f"/v1/runs/{ctx['run_id']}/recording",
                                        headers=_as(ctx, tenant)) for _ in range(2)]


@then("both exports are the same bytes of application/x-ndjson")
def same_bytes(ctx: dict[str, Any]) -> None:
    """Deterministic bytes [REC-7007]."""
    a, b = ctx["exports"]
    assert (a.status_code, b.status_code, a.headers["content-type"]) == (
        200, 200, "application/x-ndjson")
    assert a.content == b.content


@then("the lines are a header, the flow, 3 steps, 1 fact, 1 checkpoint and the trailer")
def lines_in_order(ctx: dict[str, Any]) -> None:
    """The kinds in the format's order [REC-7000]."""
    lines = ctx["exports"][0].content.split(b"\n")
    assert lines[-1] == b""
    kinds = [msgspec.json.decode(line)["kind"] for line in lines[:-1]]
    assert kinds == ["header", "flow", "step", "step", "step", "fact", "checkpoint",
                     "trailer"]


@when(parsers.parse('tenant "{tenant}" imports it into a fresh server that has no engine'))
def import_fresh(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
                 ctx: dict[str, Any], tenant: str) -> None:
    """A second server with no pool at all, and an empty database."""
    cfg = msgspec.structs.replace(mock_cfg, pools=[], data_dir=str(tmp_path / "fresh"),
                                  auth_tokens={"tok-g": tenant})
    ctx["client"] = stack.enter_context(app_client(cfg))
    resp = ctx["client"].post("/v1/recordings", content=ctx["file"],
                              headers={**NDJSON, **_as(ctx, tenant)})
    assert resp.status_code == 201, resp.text
    ctx["imported"] = [resp.json()]


@when(parsers.parse('tenant "{tenant}" replays the imported run with the recorded client '
                    'tokens'))
def replay_imported(ctx: dict[str, Any], tenant: str) -> None:
    """Every recorded Step again, in a replay Run."""
    ctx["replayed"] = _replay(ctx["client"], _as(ctx, tenant), ctx["imported"][0],
                              ctx["tokens_used"])


@then("every replayed stream equals the original stream byte for byte")
def replayed_equal(ctx: dict[str, Any]) -> None:
    """Byte-exact replay of an imported recording [REC-7012]."""
    assert ctx["replayed"] == ctx["original"]


@then("the imported run holds the recorded fact and checkpoint")
def holds_fact_and_checkpoint(ctx: dict[str, Any]) -> None:
    """Facts and checkpoints travel with the Run [REC-7013]."""
    c, auth, run_id = ctx["client"], _as(ctx, "gamma"), ctx["imported"][0]["run_id"]
    facts = c.get(f"/v1/runs/{run_id}/facts", headers=auth).json()
    ckps = c.get(f"/v1/runs/{run_id}/checkpoints", headers=auth).json()
    assert [(f["type"], f["data"], f["seq"]) for f in facts] == [("seen", {"n": 1}, 0)]
    assert [(k["checkpoint_id"], k["run_id"]) for k in ckps] == [(ctx["checkpoint_id"],
                                                                   run_id)]


@when(parsers.parse('tenant "{tenant}" imports it twice'))
def import_twice(ctx: dict[str, Any], tenant: str) -> None:
    """Two imports of the same bytes."""
    ctx["answers"] = [ctx["client"].post("/v1/recordings", content=ctx["file"],
                                         headers={**NDJSON, **_as(ctx, tenant)})
                      for _ in range(2)]
    ctx["tenant"] = tenant


@then("both imports answer 201 with two distinct run ids, the same flow and 3 steps")
def two_runs(ctx: dict[str, Any]) -> None:
    """New ids on every import [REC-7013]."""
    a, b = (r.json() for r in ctx["answers"])
    assert [r.status_code for r in ctx["answers"]] == [201, 201]
    assert a["run_id"] != b["run_id"]
    assert (a["flow_id"], a["steps"], a["root_hash"], a["recorded_run_id"]) == (
        b["flow_id"], 3, b["root_hash"], ctx["run_id"])


@then("a replay of each imported run serves the recording")
def each_replays(ctx: dict[str, Any]) -> None:
    """Both are valid ``replay_of`` targets [REC-7013]."""
    for resp in ctx["answers"]:
        got = _replay(ctx["client"], _as(ctx, ctx["tenant"]), resp.json(), ctx["tokens_used"])
        assert got == ctx["original"]


@when(parsers.parse('tenant "{tenant}" imports it'))
def import_once(ctx: dict[str, Any], tenant: str) -> None:
    """One import."""
    resp = ctx["client"].post("/v1/recordings", content=ctx["file"],
                              headers={**NDJSON, **_as(ctx, tenant)})
    assert resp.status_code == 201, resp.text
    ctx["imported"] = [resp.json()]


@when(parsers.parse('tenant "{tenant}" replays the first step with another prompt'))
def replay_changed(ctx: dict[str, Any], tenant: str) -> None:
    """A replay Run of the import; its first Step's prompt differs."""
    c, auth, imported = ctx["client"], _as(ctx, tenant), ctx["imported"][0]
    run = c.post(f"/v1/flows/{imported['flow_id']}/runs", headers=auth,
                 json={"mode": "replay", "replay_of": imported["run_id"]}).json()
    ctx["answers"] = [c.post(f"/v1/runs/{run['run_id']}/steps", headers=auth,
                             json=llm_step("call-0", "a changed prompt"))]


@then(parsers.parse('the answer is {status:d} {code} with field "{field}"'))
def answer_with_field(ctx: dict[str, Any], status: int, code: str, field: str) -> None:
    """The last answer's status, code and ``data.field``."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"]) == (
        status, code, field)


@when(parsers.parse("tenant \"{tenant}\" exports alpha's run and an unknown run"))
def export_foreign(ctx: dict[str, Any], tenant: str) -> None:
    """Two exports that must look alike."""
    ctx["unknown"] = "run_" + "0" * 24
    ctx["answers"] = [ctx["client"].get(f"/v1/runs/{r}/recording", headers=_as(ctx, tenant))
                      for r in (ctx["run_id"], ctx["unknown"])]


@then("both answer 404 NOT_FOUND alike but for the run id")
def alike_404(ctx: dict[str, Any]) -> None:
    """Tenant isolation of the export [REC-7010]."""
    a, b = ctx["answers"]
    assert (a.status_code, b.status_code) == (404, 404)
    assert a.text.replace(ctx["run_id"], ctx["unknown"]) == b.text
    assert (b.json()["code"], b.json()["data"]) == ("NOT_FOUND", {"run_id": ctx["unknown"]})


def _tamper(data: bytes, changed: str) -> bytes:
    lines = data.split(b"\n")[:-1]
    if changed == "with one byte of the third line flipped":
        at = lines[2].rindex(b'"wall_ms":') + len(b'"wall_ms":')
        while lines[2][at + 1:at + 2].isdigit():
            at += 1  # the number's last digit: another digit, still a number
        line = bytearray(lines[2])
        line[at] ^= 1
        lines[2] = bytes(line)
    elif changed == "without its trailer":
        lines = lines[:-1]
    elif changed == "cut in the middle of its fourth line":
        return b"\n".join(lines[:3]) + b"\n" + lines[3][:len(lines[3]) // 2]
    elif changed == "with the second step line removed":
        del lines[3]
    elif changed == "with the first fact's data changed":
        lines[5] = lines[5].replace(b'"data":{"n":1}', b'"data":{"n":2}')
    return b"\n".join(lines) + b"\n"


@when(parsers.parse('tenant "{tenant}" imports the recording {changed}'))
def import_tampered(ctx: dict[str, Any], tenant: str, changed: str) -> None:
    """An altered file, with the database's row counts before."""
    ctx["before"] = table_counts(ctx["db"])
    bad = _tamper(ctx["file"], changed)
    assert bad != ctx["file"]
    ctx["answers"] = [ctx["client"].post("/v1/recordings", content=bad,
                                         headers={**NDJSON, **_as(ctx, tenant)})]


@then(parsers.parse("the import answers 400 INVALID_PARAMS naming line {line:d} and reason "
                    "{reason}"))
def refused_line(ctx: dict[str, Any], line: int, reason: str) -> None:
    """The refusal names the line [REC-7006]."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"], body["data"]["line"], body["data"]["reason"]) == (
        400, "INVALID_PARAMS", line, reason), body


@then("the database holds no more runs, steps or frames than before")
def nothing_stored(ctx: dict[str, Any]) -> None:
    """Nothing partial is stored [REC-7011]."""
    assert table_counts(ctx["db"]) == ctx["before"]


@given(parsers.parse('tenant "{tenant}" replayed the run and exported the replay'))
def exported_replay(ctx: dict[str, Any], tenant: str) -> None:
    """The recording of a replay Run."""
    c, auth = ctx["client"], _as(ctx, tenant)
    run = c.get(f"/v1/runs/{ctx['run_id']}", headers=auth).json()
    replay = c.post(f"/v1/flows/{run['flow_id']}/runs", headers=auth,
                    json={"mode": "replay", "replay_of": ctx["run_id"]}).json()
    step = c.post(f"/v1/runs/{replay['run_id']}/steps", headers=auth,
                  json=llm_step("call-0", PROMPTS[0]))
    assert step.status_code == 201, step.text
    resp = c.get(f"/v1/runs/{replay['run_id']}/recording", headers=auth)
    assert resp.status_code == 200, resp.text
    ctx["file"] = resp.content


@when(parsers.parse('tenant "{tenant}" imports that recording'))
def import_that(ctx: dict[str, Any], tenant: str) -> None:
    """Import of the replay's recording."""
    ctx["answers"] = [ctx["client"].post("/v1/recordings", content=ctx["file"],
                                         headers={**NDJSON, **_as(ctx, tenant)})]


@then(parsers.parse('the import answers 400 INVALID_PARAMS naming line {line:d} and field '
                    '"{field}"'))
def refused_field(ctx: dict[str, Any], line: int, field: str) -> None:
    """The refusal names the line and the field."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"], body["data"]["line"], body["data"]["field"]) == (
        400, "INVALID_PARAMS", line, field)
