"""fs_op through the FS broker (POLICY-3001): sandbox, violations, breaker, replay; tenant
sandboxes (POLICY-3010) and roots created only for stored Runs (POLICY-3011)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.bdd.conftest import run_to_end
from test_harness.support import app_client, parse_sse

scenarios("fs_op.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(root.rglob("*"))}


@given(parsers.parse('a record run whose sandbox allows write, read and list under "{d}", on '
                     'a server recording values of at most {limit:d} bytes'))
def sandbox_run(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], d: str,
                limit: int) -> None:
    """A sandbox in the default tenant's directory of <data_dir>/sandboxes; the breaker
    opens after 3 violations."""
    cfg = msgspec.structs.replace(mock_cfg, breaker_failures=3, breaker_reset_ms=60_000,
                                  max_recorded_value_bytes=limit)
    root = (pathlib.Path(cfg.data_dir) / "sandboxes" / "default" / "run-1").resolve()
    root.mkdir(parents=True)
    (root / d).mkdir()
    ctx.update(root=root, cfg=cfg, answers=[], n=0, steps=[], bodies=[])
    ctx["client"] = client = stack.enter_context(app_client(cfg))
    ctx["flow_id"] = client.post("/v1/flows", json={"ast_ir": {"fs": 1}}).json()["flow_id"]
    ctx["fs_policy"] = {"roots": [str(root)], "allow": {
        "write": [f"{d}/*.txt"], "read": [f"{d}/*.txt"], "list": [d]}}
    ctx["run_id"] = client.post(f"/v1/flows/{ctx['flow_id']}/runs",
                                json={"seed": 1, "fs_policy": ctx["fs_policy"]}).json()["run_id"]


def _fs(ctx: dict[str, Any], op: str, path: str, content: str | None = None) -> None:
    ctx["n"] += 1
    body: dict[str, Any] = {"type": "fs_op", "client_token": f"fs-{ctx['n']}",
                            "input": {"op": op, "path": path}}
    if content is not None:
        body["input"]["content"] = content
    ctx["bodies"].append(body)
    _step, raw = run_to_end(ctx["client"], ctx["run_id"], body)
    ctx["steps"].append([f for f in parse_sse(raw) if f["id"] is not None])


@when(parsers.parse('I run fs_op write "{path}" with "{content}"'))
def write(ctx: dict[str, Any], path: str, content: str) -> None:
    """A write; the parent tree is snapshotted first."""
    ctx.setdefault("before", _tree(ctx["root"].parent))
    _fs(ctx, "write", path, content)


@when(parsers.parse('I run fs_op write "{path}" with {n:d} bytes'))
def write_n(ctx: dict[str, Any], path: str, n: int) -> None:
    """A write of ``n`` ASCII characters."""
    _fs(ctx, "write", path, "y" * n)


@when(parsers.parse('I run fs_op read "{path}"'))
def read(ctx: dict[str, Any], path: str) -> None:
    """A read."""
    _fs(ctx, "read", path)


@then(parsers.parse('the read step ends with content "{content}"'))
def read_back(ctx: dict[str, Any], content: str) -> None:
    """The recorded result carries the content."""
    end = json.loads(ctx["steps"][-1][-1]["data"])
    assert (ctx["steps"][-1][-1]["event"], end["executor"]) == ("end", "fs")
    assert end["output"]["content"] == content


@then(parsers.parse('the sandbox holds exactly out/notes.txt with "{content}"'))
def holds(ctx: dict[str, Any], content: str) -> None:
    """Atomic write: no temp files left."""
    assert _tree(ctx["root"]) == {"out": b"<dir>", "out/notes.txt": content.encode()}


@then(parsers.parse("the step ends with error {code}"))
def ends_error(ctx: dict[str, Any], code: str) -> None:
    """A typed error frame."""
    assert ctx["steps"][-1][-1]["event"] == "error"
    assert json.loads(ctx["steps"][-1][-1]["data"])["code"] == code


@then("the sandbox and its parent are unchanged")
def unchanged(ctx: dict[str, Any]) -> None:
    """Nothing written anywhere."""
    assert _tree(ctx["root"].parent) == ctx["before"]


@when(parsers.parse("I run {n:d} fs_op writes outside the allow-list"))
def violations(ctx: dict[str, Any], n: int) -> None:
    """Each is refused by the broker."""
    for i in range(n):
        _fs(ctx, "write", f"out/x{i}.sh", "nope")


@then(parsers.parse('the third stream has an escalation closed to open for "{kind}"'))
def fs_escalation(ctx: dict[str, Any], kind: str) -> None:
    """The Run's file-system breaker opened."""
    frames = ctx["steps"][2]
    assert [f["event"] for f in frames] == ["started", "escalation", "error"]
    esc = json.loads(frames[1]["data"])
    assert (esc["target"].split(":")[0], esc["from_state"], esc["to_state"]) == (
        kind, "closed", "open")


@then("the next fs_op is refused with 503 CIRCUIT_OPEN")
def refused(ctx: dict[str, Any]) -> None:
    """Refused at admission, nothing stored."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json={
        "type": "fs_op", "client_token": "after", "input": {"op": "list", "path": "out"}})
    assert (resp.status_code, resp.json()["code"]) == (503, "CIRCUIT_OPEN")


@when("I delete the sandbox file out/a.txt behind the server's back")
def delete_file(ctx: dict[str, Any]) -> None:
    """If a replay touched the file system, reads would now fail and writes recreate it."""
    (ctx["root"] / "out" / "a.txt").unlink()


@when("I replay the run in mode replay and in mode strict_replay")
def replay_both(ctx: dict[str, Any]) -> None:
    """Both replay modes, same bodies."""
    ctx["replays"] = []
    for mode in ("replay", "strict_replay"):
        run_id = ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs", json={
            "mode": mode, "replay_of": ctx["run_id"],
            "fs_policy": ctx["fs_policy"]}).json()["run_id"]
        for body in ctx["bodies"]:
            _step, raw = run_to_end(ctx["client"], run_id, body)
            ctx["replays"].append([(f["event"], f["data"]) for f in parse_sse(raw)
                                   if f["id"] is not None])


@then("every replayed step's frames equal the recording")
def replayed_equal(ctx: dict[str, Any]) -> None:
    """Recorded results are served verbatim."""
    recorded = [[(f["event"], f["data"]) for f in s] for s in ctx["steps"]]
    assert ctx["replays"] == recorded + recorded
    assert json.loads(recorded[1][-1][1])["output"]["content"] == "recorded"


@then("out/a.txt was not written again")
def not_rewritten(ctx: dict[str, Any]) -> None:
    """Zero file-system calls: the deleted file stays deleted."""
    assert not (ctx["root"] / "out" / "a.txt").exists()


@when(parsers.parse('I create a run whose fs_policy root is "{root}"'))
def bad_root(ctx: dict[str, Any], root: str) -> None:
    """A root outside <data_dir>/sandboxes/default."""
    ctx["answers"].append(ctx["client"].post(f"/v1/flows/{ctx['flow_id']}/runs",
                                             json={"fs_policy": {"roots": [root]}}))


# -- tenants (POLICY-3010, POLICY-3011) ---------------------------------------------------

OUTSIDE_TENANT = (b'{"code":"FS_POLICY_VIOLATION","message":"fs_policy.roots[0] is not inside '
                  b'this tenant\'s sandbox directory","retriable":false,"data":{"field":'
                  b'"fs_policy.roots","index":0,"rule":"outside_tenant"}}')


def _parent(ctx: dict[str, Any]) -> pathlib.Path:
    return (pathlib.Path(ctx["cfg"].data_dir) / "sandboxes").resolve()


def _as(ctx: dict[str, Any], tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer tok-{tenant}"}


def _create_run(ctx: dict[str, Any], tenant: str, **body: Any) -> Any:
    """POST a Run of the tenant's own flow; the answer is kept in ``ctx["answers"]``."""
    c, h = ctx["client"], _as(ctx, tenant)
    if tenant not in ctx["flows"]:
        ctx["flows"][tenant] = c.post("/v1/flows", json={"ast_ir": {"fs": 2}},
                                      headers=h).json()["flow_id"]
    resp = c.post(f"/v1/flows/{ctx['flows'][tenant]}/runs", json=body, headers=h)
    ctx["answers"].append(resp)
    return resp


def _write_as(ctx: dict[str, Any], tenant: str, run_id: str, path: str, content: str) -> str:
    """An fs_op write as the tenant; returns the terminal frame's event."""
    c, h = ctx["client"], _as(ctx, tenant)
    step = c.post(f"/v1/runs/{run_id}/steps", headers=h, json={
        "type": "fs_op", "client_token": "w",
        "input": {"op": "write", "path": path, "content": content}}).json()
    with c.stream("GET", f"/v1/steps/{step['step_id']}/stream", headers=h) as st:
        frames = [f for f in parse_sse(b"".join(st.iter_bytes())) if f["id"] is not None]
    return str(frames[-1]["event"])


@given(parsers.parse('tenants "{a}" and "{b}" with bearer tokens'))
def two_tenants(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], a: str,
                b: str) -> None:
    """Token ``tok-<tenant>`` authenticates each tenant."""
    ctx["cfg"] = cfg = msgspec.structs.replace(
        mock_cfg, auth_tokens={f"tok-{a}": a, f"tok-{b}": b})
    ctx.update(client=stack.enter_context(app_client(cfg)), flows={}, answers=[],
               beta_answers=[])


@given(parsers.parse('tenant "{tenant}" has a record run with its own absolute root '
                     '"{name}" holding "{file}"'))
def owned_root(ctx: dict[str, Any], tenant: str, name: str, file: str) -> None:
    """The tenant writes one file through the broker."""
    resp = _create_run(ctx, tenant, fs_policy={
        "roots": [str(_parent(ctx) / tenant / name)], "allow": {"write": [file]}})
    assert resp.status_code == 201, resp.text
    assert _write_as(ctx, tenant, resp.json()["run_id"], file, "alpha's data") == "end"


@when(parsers.parse('tenant "{tenant}" creates a record run with its own absolute root '
                    '"{name}"'))
def own_absolute_root(ctx: dict[str, Any], tenant: str, name: str) -> None:
    """A root inside the tenant's own directory is accepted and created."""
    resp = _create_run(ctx, tenant, fs_policy={"roots": [str(_parent(ctx) / tenant / name)]})
    assert resp.status_code == 201, resp.text


def _beta_names(ctx: dict[str, Any], roots: list[str]) -> None:
    for root in roots:
        ctx["beta_answers"].append(_create_run(ctx, "beta", fs_policy={
            "roots": [root], "allow": {"read": ["**"], "write": ["**"]}}))


@when(parsers.parse('tenant "beta" names alpha\'s root "{name}" before alpha creates it'))
def beta_names_absent(ctx: dict[str, Any], name: str) -> None:
    """A root in alpha's directory that does not exist yet."""
    assert not (_parent(ctx) / "alpha" / name).exists()
    _beta_names(ctx, [str(_parent(ctx) / "alpha" / name)])


@when(parsers.parse('tenant "beta" names alpha\'s roots "{a}", "{b}" and "{c}"'))
def beta_names_roots(ctx: dict[str, Any], a: str, b: str, c: str) -> None:
    """Two roots that exist (one holding a file) and one that never will."""
    _beta_names(ctx, [str(_parent(ctx) / "alpha" / n) for n in (a, b, c)])


@when(parsers.parse('tenant "beta" names alpha\'s directory, the sandbox parent and '
                    '"{relative}"'))
def beta_names_more(ctx: dict[str, Any], relative: str) -> None:
    """Whole directories, and a relative root climbing out of beta's own."""
    _beta_names(ctx, [str(_parent(ctx) / "alpha"), str(_parent(ctx)), relative])


@then("every answer to beta is 403 FS_POLICY_VIOLATION with one identical body")
def beta_refused_alike(ctx: dict[str, Any]) -> None:
    """Byte-identical bodies: nothing tells an existing root from an absent one."""
    assert [(r.status_code, r.content) for r in ctx["beta_answers"]] == [
        (403, OUTSIDE_TENANT)] * 7


@then(parsers.parse('alpha\'s root "{name}" still holds only "{file}" and beta has no '
                    'directory'))
def alpha_untouched(ctx: dict[str, Any], name: str, file: str) -> None:
    """Nothing was created or changed for beta."""
    assert _tree(_parent(ctx)) == {"alpha": b"<dir>", f"alpha/{name}": b"<dir>",
                                   f"alpha/{name}/{file}": b"alpha's data",
                                   "alpha/later": b"<dir>"}


@when(parsers.parse('tenant "{tenant}" creates a record run with the relative root '
                    '"{name}" and writes "{file}"'))
def relative_root(ctx: dict[str, Any], tenant: str, name: str, file: str) -> None:
    """The Run shows the root as posted; the write lands in the tenant's directory."""
    resp = _create_run(ctx, tenant, fs_policy={"roots": [name], "allow": {"write": [file]}})
    assert (resp.status_code, resp.json()["fs_policy"]["roots"]) == (201, [name])
    assert _write_as(ctx, tenant, resp.json()["run_id"], file, "beta's data") == "end"


@then(parsers.parse('the file is at "{path}" under the sandbox parent and alpha has no '
                    'directory'))
def relative_landed(ctx: dict[str, Any], path: str) -> None:
    """Only the caller's tree exists."""
    assert _tree(_parent(ctx)) == {"beta": b"<dir>", "beta/work": b"<dir>",
                                   path: b"beta's data"}


@then("GET /v1/capabilities lists for each tenant only its own directory of the parent")
def own_capabilities(ctx: dict[str, Any]) -> None:
    """``sandbox_parents`` names the caller's directory, never the shared parent."""
    seen = {t: ctx["client"].get("/v1/capabilities", headers=_as(ctx, t)).json()[
        "sandbox_parents"] for t in ("alpha", "beta")}
    assert seen == {"alpha": [f"{_parent(ctx)}/alpha"], "beta": [f"{_parent(ctx)}/beta"]}


@when(parsers.parse('tenant "{tenant}" creates a record run with its own absolute root '
                    '"{name}" and {flaw}'))
def flawed_run(ctx: dict[str, Any], tenant: str, name: str, flaw: str) -> None:
    """A request refused by a check other than the root's own."""
    roots = [str(_parent(ctx) / tenant / name)]
    extra: dict[str, Any] = {
        "replay_of set on a record run": {"replay_of": "run_000000000000000000000000"},
        "from_checkpoint naming no checkpoint": {
            "from_checkpoint": "ckp_00000000000000000000000000000000"},
        "a second root in beta's directory": {},
    }[flaw]
    if flaw == "a second root in beta's directory":
        roots.append(str(_parent(ctx) / "beta" / "x"))
    _create_run(ctx, tenant, fs_policy={"roots": roots}, **extra)


@when(parsers.parse('tenant "{tenant}" creates a record run with {n:d} absolute roots of '
                    'its own'))
def many_roots(ctx: dict[str, Any], tenant: str, n: int) -> None:
    """Each root alone would be fine."""
    _create_run(ctx, tenant, fs_policy={
        "roots": [str(_parent(ctx) / tenant / f"r{i}") for i in range(n)]})


@then(parsers.parse('the error names the field "{field}"'))
def names_field(ctx: dict[str, Any], field: str) -> None:
    """The decoder's message names the field and its bound; ``data.field`` names it too."""
    assert ctx["answers"][-1].json()["data"] == {"field": field, "errors": [
        {"message": "Expected `array` of length <= 16", "key": field, "source": "body"}]}


@then("the sandbox parent holds no directory")
def nothing_created(ctx: dict[str, Any]) -> None:
    """A refused Run created nothing on disk."""
    assert (_tree(_parent(ctx)) if _parent(ctx).exists() else {}) == {}


@then(parsers.parse("the write ended with end and the read with OUTPUT_TOO_LARGE {data}"))
def read_too_large(ctx: dict[str, Any], data: str) -> None:
    """[POLICY-3030] The file was written; reading it back is refused, never truncated."""
    write, read = ctx["steps"]
    env = json.loads(read[-1]["data"])
    assert (write[-1]["event"], [f["event"] for f in read]) == ("end", ["started", "error"])
    assert (env["code"], env["retriable"], env["data"]) == (
        "OUTPUT_TOO_LARGE", False, json.loads(data))


@then(parsers.parse("no stored frame of the read is larger than {limit:d} bytes"))
def read_small(ctx: dict[str, Any], limit: int) -> None:
    """The content did not reach the store."""
    orch = ctx["client"].app.state.orch
    run_id = ctx["run_id"]
    (read,) = [r for r in orch.store.list_steps(run_id) if r.client_token == "fs-2"]
    assert max(len(d) for _s, _t, d in orch.store.read_events(read.step_id, -1)) <= limit
