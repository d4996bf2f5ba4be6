"""Crash safety (NERVE-4040): kill -9 mid-stream, restart, nothing lost, INTERRUPTED."""

from __future__ import annotations

import json
import pathlib
import signal
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core import store_open
from orchestrator_core.config import ModelPrice, PriceTable, ServerConfig
from test_harness.conftest import with_options
from test_harness.store_param import with_test_store
from test_harness.support import MOCK_MODEL, llm_step, parse_sse, server_process

scenarios("crash.feature")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes servers and clients at teardown."""
    with ExitStack() as s:
        yield s


@given("a server on a slow mock engine with a step streaming")
def streaming(stack: ExitStack, mock_cfg: ServerConfig, tmp_path: pathlib.Path,
              ctx: dict[str, Any]) -> None:
    """A real server process; one long step is streaming."""
    ctx["cfg"] = msgspec.structs.replace(
        with_options(mock_cfg, tokens_per_s=100),
        prices=PriceTable(version="crash-prices", models={MOCK_MODEL: ModelPrice(
            usd_per_mtok_in=1000.0, usd_per_mtok_out=2000.0)}))
    ctx["dir"] = tmp_path / "srv"
    proc, url = stack.enter_context(server_process(ctx["cfg"], ctx["dir"]))
    http = stack.enter_context(httpx.Client(base_url=url, timeout=30.0))
    flow = http.post("/v1/flows", json={"ast_ir": {"crash": 1}}).json()
    ctx["run_id"] = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
    ctx["body"] = llm_step("crash-1", "a very long answer", max_tokens=3000)
    ctx["step"] = http.post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"]).json()
    ctx["proc"], ctx["http"] = proc, http


@when(parsers.parse("the server is killed with SIGKILL after {n:d} token frames were read"))
def kill(ctx: dict[str, Any], n: int) -> None:
    """Read part of the stream, then kill -9 the server."""
    raw = b""
    with pytest.raises(httpx.HTTPError), ctx["http"].stream(  # noqa: PT012 - read until it breaks
            "GET", f"/v1/steps/{ctx['step']['step_id']}/stream") as s:
        for chunk in s.iter_bytes():
            raw += chunk
            if raw.count(b"event: token") >= n and ctx["proc"].poll() is None:
                ctx["proc"].send_signal(signal.SIGKILL)
                ctx["proc"].wait()
    ctx["read"] = [f for f in parse_sse(raw.rsplit(b"\n\n", 1)[0] + b"\n\n")
                   if f["id"] is not None]
    assert sum(1 for f in ctx["read"] if f["event"] == "token") >= n


@when("the server restarts on the same data directory")
def restart(stack: ExitStack, ctx: dict[str, Any]) -> None:
    """Same config, same SQLite file."""
    _proc, url = stack.enter_context(server_process(ctx["cfg"], ctx["dir"]))
    ctx["http"] = stack.enter_context(httpx.Client(base_url=url, timeout=30.0))


@then("the step is interrupted and its stream ends with an INTERRUPTED error frame")
def interrupted(ctx: dict[str, Any]) -> None:
    """Recovery closed the step."""
    http: httpx.Client = ctx["http"]
    step = http.get(f"/v1/steps/{ctx['step']['step_id']}").json()
    assert step["status"] == "interrupted"
    with http.stream("GET", f"/v1/steps/{ctx['step']['step_id']}/stream") as s:
        ctx["after"] = parse_sse(b"".join(s.iter_bytes()))
    assert ctx["after"][-1]["event"] == "error"
    assert json.loads(ctx["after"][-1]["data"])["code"] == "INTERRUPTED"
    assert step["last_seq"] == ctx["after"][-1]["id"]


@then("the step's log has no gaps and still holds every token frame that was read")
def no_gaps(ctx: dict[str, Any]) -> None:
    """Every frame a reader saw was committed; ids are 0..n with no hole."""
    after = ctx["after"]
    assert [f["id"] for f in after] == list(range(len(after)))
    assert after[: len(ctx["read"])] == ctx["read"]
    tokens = [json.loads(f["data"])["i"] for f in after if f["event"] == "token"]
    assert tokens == list(range(len(tokens)))


@then("the step and its INTERRUPTED frame record the tokens it consumed, their cost and its "
      "wall time")
def consumed(ctx: dict[str, Any]) -> None:
    """[NERVE-4040] Recovery counts the committed token frames, prices them with the
    prompt, and measures the wall time from the Step's creation; the error frame carries
    the same provenance block as the Step, without a finish_reason (NERVE-4020)."""
    step = ctx["http"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    frame = json.loads(ctx["after"][-1]["data"])
    tokens = sum(1 for f in ctx["after"] if f["event"] == "token")
    usage, prov = step["usage"], step["provenance"]
    assert frame["provenance"] == prov
    assert (usage["tokens_out"], prov["tokens_out"]) == (tokens, tokens)
    assert usage["tokens_in"] == prov["tokens_in"] > 0
    cost = round((usage["tokens_in"] * 1000.0 + tokens * 2000.0) / 1e6, 9)
    assert (usage["cost_usd"], prov["cost_usd"]) == (cost, cost)
    assert usage["wall_ms"] >= 20 * 10  # 20 tokens read at 100 tokens/s
    assert (prov["engine"], prov["seed"], prov["price_table_version"],
            "finish_reason" in prov) == ("mock", step["seed"], "crash-prices", False)


@then("re-submitting the same client_token retries the interrupted step as attempt 1, "
      "answered as itself from then on")
def resubmit(ctx: dict[str, Any]) -> None:
    """[NERVE-4105] The interrupted Step is retried as a new attempt linked to the first;
    the token then names the retry, and idempotency holds for it (it is cancelled and
    read to its end so the store is quiet for the integrity check)."""
    http, first = ctx["http"], ctx["step"]["step_id"]
    retry = http.post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"])
    assert retry.status_code == 201, retry.text
    step = retry.json()
    assert (step["step_id"] != first, step["attempt"], step["retry_of"],
            step["client_token"]) == (True, 1, first, ctx["body"]["client_token"])
    again = http.post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"])
    assert (again.status_code, again.json()["step_id"]) == (200, step["step_id"])
    http.post(f"/v1/steps/{step['step_id']}/cancel")
    with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
        assert parse_sse(b"".join(s.iter_bytes()))[-1]["event"] == "error"
    assert http.get(f"/v1/steps/{first}").json()["status"] == "interrupted"


@then("the run's usage is its one interrupted step's usage")
def run_usage(ctx: dict[str, Any]) -> None:
    """[NERVE-4042] The Run's usage counters took in what recovery recorded on the Step,
    in the recovery's own transaction."""
    step = ctx["http"].get(f"/v1/steps/{ctx['step']['step_id']}").json()
    run = ctx["http"].get(f"/v1/runs/{ctx['run_id']}").json()
    assert (run["usage"], run["steps"]) == (step["usage"], {"interrupted": 1})


@then("the store's integrity check finds no gap, stale cursor, second terminal frame or "
      "usage counter off its recount")
def integrity(ctx: dict[str, Any]) -> None:
    """Checked on the store itself (NERVE-4042 for the counters), the SQLite file or, on
    the PostgreSQL pass, its schema (PG-9053)."""
    cfg = with_test_store(msgspec.structs.replace(ctx["cfg"], data_dir=str(ctx["dir"])))
    store: Any = store_open.open_store(cfg)
    try:
        assert store.integrity() == {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0,
                                     "broken_references": 0, "usage_mismatch": 0}
    finally:
        store.close()

