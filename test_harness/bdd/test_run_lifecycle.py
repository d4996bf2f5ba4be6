"""A Run's lifecycle: the run stream, closing a Run and retrying an interrupted Step
(NERVE-4100..NERVE-4106), and the tenancy of the checkpoint and fact lists (NERVE-4051)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ServerConfig
from test_harness.conftest import with_options
from test_harness.support import app_client, llm_step, parse_sse

scenarios("run_lifecycle.feature")

UNKNOWN_RUN = "run_" + "0" * 24


@pytest.fixture
def stack(ctx: dict[str, Any]) -> Iterator[ExitStack]:
    """Closes the scenario's apps at teardown (also those a restart opened)."""
    with ExitStack() as s:
        yield s
        later = ctx.get("stack")
        if later is not None and later is not s:
            later.close()


def _as(ctx: dict[str, Any], tenant: str = "alpha") -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


def _new_run(ctx: dict[str, Any], tenant: str = "alpha") -> str:
    c, h = ctx["client"], _as(ctx, tenant)
    flow = c.post("/v1/flows", json={"ast_ir": {"life": 1}}, headers=h).json()["flow_id"]
    resp = c.post(f"/v1/flows/{flow}/runs", json={"seed": 5}, headers=h)
    assert resp.status_code == 201, resp.text
    ctx["flow_id"] = flow
    run_id: str = resp.json()["run_id"]
    return run_id


def _step_to_end(ctx: dict[str, Any], run_id: str, token: str) -> bytes:
    """Submit an llm_call and read its own stream to the end; keep its step."""
    c, h = ctx["client"], _as(ctx)
    resp = c.post(f"/v1/runs/{run_id}/steps", json=llm_step(token, f"say {token}"), headers=h)
    assert resp.status_code == 201, resp.text
    ctx.setdefault("steps", []).append(resp.json())
    with c.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream", headers=h) as s:
        return b"".join(s.iter_bytes())


def _read_run(ctx: dict[str, Any], last: int | None = None) -> list[dict[str, Any]]:
    headers = _as(ctx) | ({"Last-Event-ID": str(last)} if last is not None else {})
    with ctx["client"].stream("GET", f"/v1/runs/{ctx['run_id']}/stream",
                              headers=headers) as s:
        assert s.status_code == 200
        return parse_sse(b"".join(s.iter_bytes()))


def _serve(ctx: dict[str, Any], cfg: ServerConfig) -> None:
    ctx["client"] = ctx["stack"].enter_context(app_client(cfg))


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants on the mock engine."""
    ctx["cfg"] = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["stack"] = stack
    ctx["tokens"] = {a: ta, b: tb}
    _serve(ctx, ctx["cfg"])


@when(parsers.parse('tenant "alpha" runs {n:d} steps to their end in a run and closes it '
                    '"{status}"'))
def run_and_close(ctx: dict[str, Any], n: int, status: str) -> None:
    """Steps read to their end one after the other, then the close."""
    ctx["run_id"] = _new_run(ctx)
    ctx["own"] = [_step_to_end(ctx, ctx["run_id"], f"t{i}") for i in range(n)]
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert resp.status_code == 200, resp.text
    ctx["closed"] = resp.json()


@when('tenant "alpha" reads the run stream')
def read_run(ctx: dict[str, Any]) -> None:
    """From the start."""
    ctx["events"] = _read_run(ctx)


@when(parsers.parse('tenant "alpha" reads the run stream again after position {n:d}'))
def read_again(ctx: dict[str, Any], n: int) -> None:
    """Resumed with Last-Event-ID."""
    ctx["resumed"] = _read_run(ctx, n)
    ctx["after"] = n


@then("the run stream holds each step's frames with the bytes of its own stream, at "
      "positions 0 onwards")
def frames_in_order(ctx: dict[str, Any]) -> None:
    """[NERVE-4100] Commit order (the steps ran one after the other), ids 0, 1, ... with
    no gap, each event naming its step and carrying its frame's data byte for byte."""
    events = ctx["events"][:-1]
    assert [e["id"] for e in events] == list(range(len(events)))
    expected = []
    for step, own in zip(ctx["steps"], ctx["own"], strict=True):
        for frame in parse_sse(own):
            expected.append({"id": None, "event": frame["event"], "data": (
                f'{{"step_id":"{step["step_id"]}","step_type":"llm_call","seq":{frame["id"]},'
                f'"data":{frame["data"]}}}')})
    assert [{**e, "id": None} for e in events] == expected
    assert [e["event"] for e in events].count("end") == 2


@then(parsers.parse('the run stream ends with a run_end event carrying status "{status}" '
                    "and the run's summary"))
def ends_with_run_end(ctx: dict[str, Any], status: str) -> None:
    """[NERVE-4101] id: the Run's frame count; data: its final status and summary."""
    last = ctx["events"][-1]
    assert (last["id"], last["event"]) == (len(ctx["events"]) - 1, "run_end")
    assert json.loads(last["data"]) == {"run_id": ctx["run_id"], "status": status,
                                        "summary": ctx["closed"]["summary"]}


@then(parsers.parse("the resumed stream is the first read's events after position {n:d}"))
def resumed(ctx: dict[str, Any], n: int) -> None:
    """[NERVE-4100] Last-Event-ID n resumes at n + 1."""
    assert ctx["resumed"] == [e for e in ctx["events"] if e["id"] > n]
    assert ctx["resumed"][0]["id"] == n + 1


@then("reading the run stream after its run_end event answers 204 with no body")
def after_end(ctx: dict[str, Any]) -> None:
    """[NERVE-4101] So a browser's EventSource stops; one before it gets run_end only."""
    end = ctx["events"][-1]["id"]
    resp = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/stream",
                             headers=_as(ctx) | {"Last-Event-ID": str(end)})
    assert (resp.status_code, resp.content) == (204, b"")
    assert [e["event"] for e in _read_run(ctx, end - 1)] == ["run_end"]


@when('tenant "alpha" opens the run stream of a new run')
def open_stream(ctx: dict[str, Any]) -> None:
    """A reader thread holds the stream open from the start."""
    ctx["run_id"] = _new_run(ctx)
    ctx["live_events"] = []

    def reader() -> None:
        ctx["live_events"] = _read_run(ctx)

    ctx["reader"] = threading.Thread(target=reader, daemon=True)
    ctx["reader"].start()


@when(parsers.parse('tenant "alpha" runs {n:d} steps to their end in that run while the '
                    'stream is open, then closes it "{status}"'))
def run_while_open(ctx: dict[str, Any], n: int, status: str) -> None:
    """The steps are submitted after the reader subscribed (it waits on an empty log)."""
    time.sleep(0.2)
    ctx["own"] = [_step_to_end(ctx, ctx["run_id"], f"live{i}") for i in range(n)]
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert resp.status_code == 200, resp.text
    ctx["reader"].join(timeout=10)
    assert not ctx["reader"].is_alive()


@then("the open run stream received both steps' frames and a run_end event")
def live_received(ctx: dict[str, Any]) -> None:
    """[NERVE-4100] Followed live, ending with run_end (NERVE-4101)."""
    events = ctx["live_events"]
    # durable frames only: a slower store lets a Step's own stream carry an ephemeral
    # ``metrics`` frame (no id), which the run log never holds (PG-9053)
    frames = sum(f["id"] is not None for own in ctx["own"] for f in parse_sse(own))
    assert [e["id"] for e in events] == list(range(frames + 1))
    assert [json.loads(e["data"])["step_id"] for e in events[:-1]].count(
        ctx["steps"][0]["step_id"]) == sum(f["id"] is not None
                                           for f in parse_sse(ctx["own"][0]))
    assert (events[-1]["event"], json.loads(events[-1]["data"])["status"]) == (
        "run_end", "completed")


@then("tenant \"beta\" reading alpha's run stream gets the same 404 NOT_FOUND as for an "
      "unknown run")
def other_tenant_stream(ctx: dict[str, Any]) -> None:
    """[NERVE-4051] The same answer but the id."""
    answers = [ctx["client"].get(f"/v1/runs/{rid}/stream", headers=_as(ctx, "beta"))
               for rid in (ctx["run_id"], UNKNOWN_RUN)]
    assert [(a.status_code, a.json()["code"], a.json()["data"]) for a in answers] == [
        (404, "NOT_FOUND", {"run_id": ctx["run_id"]}),
        (404, "NOT_FOUND", {"run_id": UNKNOWN_RUN})]


@then(parsers.parse('reading the run stream with Last-Event-ID "{raw}" is refused with 400 '
                    'INVALID_PARAMS naming field "{field}"'))
def bad_cursor(ctx: dict[str, Any], raw: str, field: str) -> None:
    """[NERVE-4100] A typed 400, before anything is written."""
    resp = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/stream",
                             headers=_as(ctx) | {"Last-Event-ID": raw})
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        400, "INVALID_PARAMS", {"field": field, "last_event_id": raw})


@then(parsers.parse('the run is "{status}" with a closed_at and a summary of {n:d} succeeded '
                    'llm_call steps on engine "{engine}"'))
def closed_summary(ctx: dict[str, Any], status: str, n: int, engine: str) -> None:
    """[NERVE-4104] The summary counts the Steps and sums their usage."""
    run = ctx["client"].get(f"/v1/runs/{ctx['run_id']}", headers=_as(ctx)).json()
    assert run == ctx["closed"]
    summary = run["summary"]
    usage = run["usage"]
    assert (run["status"], run["closed_at"] is not None) == (status, True)
    assert {k: v for k, v in summary.items() if k not in (
        "model_hashes", "engine_builds", "steps_hash")} == {
        "status": status, "mode": "record", "seed": 5, "steps": n,
        "steps_by_type": {"llm_call": {"succeeded": n}},
        "tokens_in": usage["tokens_in"], "tokens_out": usage["tokens_out"],
        "cost_usd": usage["cost_usd"], "wall_ms": usage["wall_ms"],
        "engines": [engine], "models": ["mock:echo-1"]}
    assert summary["steps_hash"].startswith("b3:") and len(summary["engine_builds"]) == 1


@then(parsers.parse('closing it "{status}" again answers 200 with the same run'))
def close_again(ctx: dict[str, Any], status: str) -> None:
    """[NERVE-4103] Idempotent."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert (resp.status_code, resp.json()) == (200, ctx["closed"])


@then(parsers.parse('closing it "{status}" answers 409 CONFLICT naming field "{field}"'))
def close_other(ctx: dict[str, Any], status: str, field: str) -> None:
    """[NERVE-4103] A closed Run keeps its status."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        409, "CONFLICT", {"field": field, "run_id": ctx["run_id"],
                          "status": ctx["closed"]["status"]})


@then(parsers.parse('a new step in the closed run is refused with 409 CONFLICT naming field '
                    '"{field}"'))
def closed_refuses(ctx: dict[str, Any], field: str) -> None:
    """[NERVE-4103] No new Step."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=llm_step("late"),
                              headers=_as(ctx))
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        409, "CONFLICT", {"field": field, "run_id": ctx["run_id"],
                          "status": ctx["closed"]["status"]})


@then("re-submitting a token the closed run has answers 200 with its step")
def closed_repeat(ctx: dict[str, Any]) -> None:
    """[NERVE-4003] Idempotency is unchanged by the close."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps",
                              json=llm_step("t0", "say t0"), headers=_as(ctx))
    assert (resp.status_code, resp.json()["step_id"]) == (200, ctx["steps"][0]["step_id"])


@when('tenant "alpha" starts a long step in a new run on a slow engine')
def long_step(ctx: dict[str, Any]) -> None:
    """100 tokens/s and up to 3000 of them; it has started when this returns."""
    ctx["stack"].close()
    ctx["stack"] = ExitStack()
    ctx["slow"] = with_options(ctx["cfg"], tokens_per_s=100)
    _serve(ctx, ctx["slow"])
    ctx["run_id"] = _new_run(ctx)
    ctx["body"] = llm_step("long", "a very long answer", max_tokens=3000)
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"],
                              headers=_as(ctx))
    assert resp.status_code == 201, resp.text
    ctx["step"] = resp.json()
    deadline = time.monotonic() + 10
    while ctx["client"].get(f"/v1/steps/{ctx['step']['step_id']}",
                            headers=_as(ctx)).json()["last_seq"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@then(parsers.parse('closing the run "{status}" answers 409 CONFLICT naming field "{field}" '
                    'with {n:d} live step'))
def close_live(ctx: dict[str, Any], status: str, field: str, n: int) -> None:
    """[NERVE-4103] ``completed`` waits for the Steps."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
        409, "CONFLICT", {"field": field, "run_id": ctx["run_id"], "live_steps": n})


@when(parsers.parse('tenant "alpha" closes the run "{status}"'))
def close_run(ctx: dict[str, Any], status: str) -> None:
    """The close answers at once."""
    resp = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/close", json={"status": status},
                              headers=_as(ctx))
    assert (resp.status_code, resp.json()["status"]) == (200, status)


@then(parsers.parse('the long step ends CANCELLED with message "{message}"'))
def long_cancelled(ctx: dict[str, Any], message: str) -> None:
    """[NERVE-4103] Its stream ends with the CANCELLED error frame."""
    with ctx["client"].stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream",
                              headers=_as(ctx)) as s:
        last = parse_sse(b"".join(s.iter_bytes()))[-1]
    data = json.loads(last["data"])
    assert (last["event"], data["code"], data["message"]) == ("error", "CANCELLED", message)


@then(parsers.parse('the run is "{status}" with a summary of {n:d} cancelled llm_call step'))
def cancelled_summary(ctx: dict[str, Any], status: str, n: int) -> None:
    """[NERVE-4104] The summary is fixed once the cancelled Step has ended."""
    run = ctx["client"].get(f"/v1/runs/{ctx['run_id']}", headers=_as(ctx)).json()
    assert (run["status"], run["summary"]["status"], run["summary"]["steps_by_type"]) == (
        status, status, {"llm_call": {"cancelled": n}})


@when("the server stops while the step runs and starts again on the same data")
def restart(ctx: dict[str, Any]) -> None:
    """The shutdown ends the running Step INTERRUPTED; the new server runs at full speed."""
    ctx["stack"].close()
    ctx["stack"] = ExitStack()
    _serve(ctx, ctx["cfg"])


@then("the step is interrupted")
def interrupted(ctx: dict[str, Any]) -> None:
    """[NERVE-4040] Its error is INTERRUPTED."""
    step = ctx["client"].get(f"/v1/steps/{ctx['step']['step_id']}", headers=_as(ctx)).json()
    assert (step["status"], step["error"]["code"]) == ("interrupted", "INTERRUPTED")


@when('tenant "alpha" submits the same client_token again')
def resubmit(ctx: dict[str, Any]) -> None:
    """Same token, same input."""
    ctx["retry"] = ctx["client"].post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"],
                                      headers=_as(ctx))


@then("the answer is 201 with a new step, attempt 1, retry_of the interrupted step")
def retried(ctx: dict[str, Any]) -> None:
    """[NERVE-4105] A new attempt linked to the first."""
    resp, first = ctx["retry"], ctx["step"]
    assert resp.status_code == 201, resp.text
    step = resp.json()
    assert (step["step_id"] != first["step_id"], step["client_token"], step["attempt"],
            step["retry_of"], step["seed"], first["attempt"]) == (
        True, "long", 1, first["step_id"], first["seed"], 0)


@then("the run lists both attempts in submission order")
def both_listed(ctx: dict[str, Any]) -> None:
    """[NERVE-4105] Every attempt is a Step of the Run."""
    steps = ctx["client"].get(f"/v1/runs/{ctx['run_id']}/steps", headers=_as(ctx)).json()
    assert [(s["step_id"], s["attempt"]) for s in steps] == [
        (ctx["step"]["step_id"], 0), (ctx["retry"].json()["step_id"], 1)]


@when("the retry runs to its end and the run is replayed with the same token")
def replay_retry(ctx: dict[str, Any]) -> None:
    """A replay Run of the recording submits the token once."""
    c, h, retry_id = ctx["client"], _as(ctx), ctx["retry"].json()["step_id"]
    with c.stream("GET", f"/v1/steps/{retry_id}/stream", headers=h) as s:
        ctx["retry_bytes"] = b"".join(s.iter_bytes())
    rep = c.post(f"/v1/flows/{ctx['flow_id']}/runs",
                 json={"mode": "replay", "replay_of": ctx["run_id"]}, headers=h)
    assert rep.status_code == 201, rep.text
    resp = c.post(f"/v1/runs/{rep.json()['run_id']}/steps", json=ctx["body"], headers=h)
    assert resp.status_code == 201, resp.text
    ctx["replayed"] = resp.json()
    with c.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream", headers=h) as s:
        ctx["replayed_bytes"] = b"".join(s.iter_bytes())


@then("the replayed step serves the retry's frames, byte for byte")
def replay_serves_retry(ctx: dict[str, Any]) -> None:
    """[NERVE-4106] Matched to the attempt that finished, not the interrupted one."""
    assert (ctx["replayed"]["replay_of_step"], ctx["replayed"]["status"],
            ctx["replayed"]["attempt"]) == (ctx["retry"].json()["step_id"], "succeeded", 0)
    assert ctx["replayed_bytes"] == ctx["retry_bytes"]
    assert parse_sse(ctx["retry_bytes"])[-1]["event"] == "end"


@then("tenant \"beta\" listing alpha's run's checkpoints and facts gets the same 404 NOT_FOUND "
      "as for an unknown run")
def other_tenant_lists(ctx: dict[str, Any]) -> None:
    """[NERVE-4051] The checkpoint list (NERVE-4008) and the run's fact list."""
    got = []
    for what in ("checkpoints", "facts"):
        for rid in (ctx["run_id"], UNKNOWN_RUN):
            a = ctx["client"].get(f"/v1/runs/{rid}/{what}", headers=_as(ctx, "beta"))
            got.append((what, a.status_code, a.json()["code"], a.json()["data"]))
    assert got == [(w, 404, "NOT_FOUND", {"run_id": r}) for w in ("checkpoints", "facts")
                   for r in (ctx["run_id"], UNKNOWN_RUN)]
