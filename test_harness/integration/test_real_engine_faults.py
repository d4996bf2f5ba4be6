"""Engine faults, cancellation and budgets on the real llama.cpp engine.

STREAM-2002, STREAM-2005, PLACE-5002, POLICY-3000: a replica killed mid-stream ends the
step with a typed error within a second and is restarted; a cancel stops the engine
(no token frame after it, and the engine is free at once); concurrent steps never
overshoot a Run's output budget.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator_core.config import default_config
from test_harness.support import REAL_MODEL, parse_sse, server_process

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real server of its own (its replica gets killed)."""
    data = pathlib.Path(tmp_path_factory.mktemp("faults"))
    with server_process(default_config(data_dir=str(data)), data) as (_p, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        yield http


def _run(http: httpx.Client, **fields: Any) -> str:
    flow = http.post("/v1/flows", json={"ast_ir": {"faults": 1}}).json()
    resp = http.post(f"/v1/flows/{flow['flow_id']}/runs", json=fields)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def _long(token: str, max_tokens: int = 600) -> dict[str, Any]:
    return {"type": "llm_call", "client_token": token,
            "input": {"model": REAL_MODEL, "prompt": "Once upon a time, in a long story,",
                      "params": {"temperature": 0.8, "max_tokens": max_tokens,
                                 "min_p": 0.0, "top_k": 0, "top_p": 1.0}}}


def _replica(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/v1/pools").json()[0]["replicas"][0])


def _stream_until(http: httpx.Client, step_id: str, n_tokens: int,
                  action: Any) -> tuple[list[dict[str, Any]], float]:
    """Read the stream; call ``action()`` once n tokens arrived; read to the end.

    Returns:
        (durable frames, seconds from the action to the terminal frame)
    """
    raw, acted = b"", 0.0
    with http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        for chunk in s.iter_bytes():
            raw += chunk
            if not acted and raw.count(b"event: token") >= n_tokens:
                action()
                acted = time.monotonic()
    return [f for f in parse_sse(raw) if f["id"] is not None], time.monotonic() - acted


class TestEngineFaults:
    """A replica that dies mid-stream gives a typed error fast and comes back."""

    def test_killed_replica_ends_the_step_within_a_second_and_restarts(
            self, real: httpx.Client) -> None:
        """ENGINE_ERROR or INTERRUPTED within 1 s; the pool shows the restart."""
        before = _replica(real)
        step = real.post(f"/v1/runs/{_run(real)}/steps", json=_long("k-1")).json()
        frames, elapsed = _stream_until(real, step["step_id"], 5,
                                        lambda: os.kill(before["pid"], signal.SIGKILL))
        err = json.loads(frames[-1]["data"])
        assert frames[-1]["event"] == "error"
        assert err["code"] in ("ENGINE_ERROR", "INTERRUPTED")
        assert elapsed < 1.0
        deadline = time.monotonic() + 30
        rep = _replica(real)
        while time.monotonic() < deadline and not (
                rep["restarts"] == before["restarts"] + 1 and rep["health"] == "ready"):
            time.sleep(0.1)
            rep = _replica(real)
        assert (rep["restarts"], rep["health"]) == (before["restarts"] + 1, "ready")
        assert rep["pid"] != before["pid"]


class TestCancel:
    """A cancel stops the engine: no token frame follows it."""

    @pytest.mark.parametrize("trial", range(5))
    def test_cancel_stops_generation(self, real: httpx.Client, trial: int) -> None:
        """No token after the cancel; tokens received = token frames; the engine is free."""
        run_id = _run(real)
        step = real.post(f"/v1/runs/{run_id}/steps", json=_long(f"c-{trial}")).json()
        gen_before = _replica(real)["tokens_generated"]
        frames, _ = _stream_until(
            real, step["step_id"], 3 + trial,
            lambda: real.post(f"/v1/steps/{step['step_id']}/cancel"))
        assert frames[-1]["event"] == "error"
        assert json.loads(frames[-1]["data"])["code"] == "CANCELLED"
        tokens = sum(1 for f in frames if f["event"] == "token")
        assert 3 + trial <= tokens < 600
        assert _replica(real)["tokens_generated"] - gen_before == tokens
        t0 = time.monotonic()  # a 600-token generation would hold the replica for seconds
        quick = real.post(f"/v1/runs/{run_id}/steps", json={
            "type": "llm_call", "client_token": f"q-{trial}",
            "input": {"model": REAL_MODEL, "prompt": "Hi", "params": {"max_tokens": 2}}})
        with real.stream("GET", f"/v1/steps/{quick.json()['step_id']}/stream") as s:
            b"".join(s.iter_bytes())
        assert time.monotonic() - t0 < 2.0


class TestBudgets:
    """Concurrent steps never overshoot a Run's output-token budget."""

    def test_eight_concurrent_steps_stay_within_the_run_budget(self,
                                                               real: httpx.Client) -> None:
        """8 steps of up to 24 tokens against a budget of 60: at most 60 tokens in total."""
        run_id = _run(real, budgets={"max_tokens_out": 60})
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def submit(i: int) -> None:
            resp = real.post(f"/v1/runs/{run_id}/steps", json=_long(f"b-{i}", 24))
            with lock:
                answers.append(resp)

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        admitted = [a.json()["step_id"] for a in answers if a.status_code == 201]
        refused = [a for a in answers if a.status_code == 402]
        assert len(admitted) + len(refused) == 8
        for sid in admitted:
            with real.stream("GET", f"/v1/steps/{sid}/stream") as s:
                b"".join(s.iter_bytes())
        run = real.get(f"/v1/runs/{run_id}").json()
        assert run["usage"]["tokens_out"] <= 60
        assert {a.json()["code"] for a in refused} <= {"BUDGET_EXCEEDED"}
