"""Steps are idempotent by client_token (NERVE-4003)."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient
from pytest_bdd import parsers, scenarios, then, when

from test_harness.bdd.conftest import new_run
from test_harness.support import llm_step

scenarios("idempotency.feature")


@when(parsers.parse('I submit an llm_call with client_token "{token}" and prompt "{prompt}"'))
def submit(client: TestClient[Any], ctx: dict[str, Any], token: str, prompt: str) -> None:
    """Submit one llm_call."""
    ctx["body"] = llm_step(token, prompt)
    ctx["answers"].append(client.post(f"/v1/runs/{ctx['run_id']}/steps", json=ctx["body"]))


@when("I submit the same llm_call in a second record run")
def submit_elsewhere(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Same body, another run."""
    other = new_run(client)
    ctx["answers"].append(client.post(f"/v1/runs/{other}/steps", json=ctx["body"]))


@then("the answers are 201 then 200 with the same step_id")
def same_step(ctx: dict[str, Any]) -> None:
    """The second submission names the first step."""
    a, b = ctx["answers"]
    assert (a.status_code, b.status_code) == (201, 200)
    assert a.json()["step_id"] == b.json()["step_id"]


@then(parsers.parse("the last answer is {status:d} with code {code}"))
def last_answer(ctx: dict[str, Any], status: int, code: str) -> None:
    """The conflicting submission is refused with the recorded and submitted hashes."""
    resp = ctx["answers"][-1]
    assert (resp.status_code, resp.json()["code"]) == (status, code)
    data = resp.json()["data"]
    assert data["step_id"] == ctx["answers"][0].json()["step_id"]
    assert data["recorded_hash"] != data["submitted_hash"]


@then(parsers.parse("the run has {n:d} step"))
def run_steps(client: TestClient[Any], ctx: dict[str, Any], n: int) -> None:
    """Nothing extra was stored."""
    run = client.get(f"/v1/runs/{ctx['run_id']}").json()
    assert sum(run["steps"].values()) == n


@then("the two step_ids differ")
def differ(ctx: dict[str, Any]) -> None:
    """Idempotency is scoped to the run."""
    a, b = ctx["answers"]
    assert a.json()["step_id"] != b.json()["step_id"]
