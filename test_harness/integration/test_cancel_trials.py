"""Cancellation, heartbeats, run cancel and queue position over real HTTP (STREAM-2002).

50 cancel trials on the mock engine through Granian: no ``token`` frame ever follows the
cancel, the stream's last frame is ``error`` CANCELLED, and the engine generated exactly
the tokens the log holds.
"""

from __future__ import annotations

import json
import pathlib
import random
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from orchestrator_core.config import ServerConfig, mock_config
from test_harness.support import llm_step, parse_sse, server_process


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A Granian server on a mock engine at 400 tokens/s, heartbeats every 100 ms."""
    data = pathlib.Path(tmp_path_factory.mktemp("cancel"))
    cfg: ServerConfig = msgspec.structs.replace(
        mock_config(data_dir=str(data), replicas=1, slots_per_replica=1,
                    mock_options={"tokens_per_s": 400, "length": 4000}),
        heartbeat_ms=100)
    with server_process(cfg, data) as (_p, url), \
            httpx.Client(base_url=url, timeout=30.0) as client:
        yield client


def _run(http: httpx.Client) -> str:
    flow = http.post("/v1/flows", json={"ast_ir": {"cancel": "trials"}}).json()
    return str(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"])


def _replica(http: httpx.Client) -> dict[str, Any]:
    return dict(http.get("/v1/pools").json()[0]["replicas"][0])


class TestCancelTrials:
    """No token frame after the cancel, in 50 trials at random points."""

    def test_fifty_cancels_at_random_points(self, http: httpx.Client) -> None:
        """Cancel after 1..40 tokens; the stream ends CANCELLED with nothing after it."""
        rng = random.Random(2026)
        run_id = _run(http)
        for trial in range(50):
            n = rng.randint(1, 40)
            gen_before = _replica(http)["tokens_generated"]
            step = http.post(f"/v1/runs/{run_id}/steps",
                             json=llm_step(f"t-{trial}", max_tokens=4000)).json()
            raw, cancelled = b"", False
            with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                for chunk in s.iter_bytes():
                    raw += chunk
                    if not cancelled and raw.count(b"event: token") >= n:
                        cancelled = True
                        assert http.post(f"/v1/steps/{step['step_id']}/cancel").status_code \
                            == 202
            frames = [f for f in parse_sse(raw) if f["id"] is not None]
            tokens = [f for f in frames if f["event"] == "token"]
            assert (trial, frames[-1]["event"]) == (trial, "error")
            assert json.loads(frames[-1]["data"])["code"] == "CANCELLED"
            assert frames[-2]["event"] in ("token", "started")
            assert n <= len(tokens) < 4000
            assert _replica(http)["tokens_generated"] - gen_before == len(tokens)


class TestHeartbeats:
    """Idle streams carry ``: keep-alive`` comments at the configured interval."""

    def test_a_queued_step_stream_gets_keep_alives(self, http: httpx.Client) -> None:
        """While a step waits for the single slot, its stream receives heartbeats."""
        run_id = _run(http)
        busy = http.post(f"/v1/runs/{run_id}/steps",
                         json=llm_step("busy", max_tokens=300)).json()
        waiting = http.post(f"/v1/runs/{run_id}/steps",
                            json=llm_step("waiting", max_tokens=5)).json()
        with http.stream("GET", f"/v1/steps/{waiting['step_id']}/stream") as s:
            raw = b"".join(s.iter_bytes())
        assert raw.count(b": keep-alive\n\n") >= 2
        frames = [f for f in parse_sse(raw) if f["id"] is not None]
        started = json.loads(frames[0]["data"])
        assert started["predicted_start_ms"] > 0
        assert [f["event"] for f in frames][-1] == "end"
        assert http.get(f"/v1/steps/{busy['step_id']}").json()["status"] == "succeeded"


class TestRunCancel:
    """Cancelling a run cancels its in-flight steps and refuses new ones."""

    def test_run_cancel(self, http: httpx.Client) -> None:
        """The streaming step ends CANCELLED ("run cancelled"); a new step is 409."""
        run_id = _run(http)
        step = http.post(f"/v1/runs/{run_id}/steps",
                         json=llm_step("r-1", max_tokens=4000)).json()
        raw, done = b"", False
        with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
            for chunk in s.iter_bytes():
                raw += chunk
                if not done and b"event: token" in raw:
                    done = True
                    run = http.post(f"/v1/runs/{run_id}/cancel").json()
                    assert run["status"] == "cancelled"
        err = json.loads(parse_sse(raw)[-1]["data"])
        assert (err["code"], err["message"]) == ("CANCELLED", "run cancelled")
        again = http.post(f"/v1/runs/{run_id}/steps", json=llm_step("r-2"))
        assert (again.status_code, again.json()["code"]) == (409, "CONFLICT")
        assert http.post(f"/v1/runs/{run_id}/cancel").status_code == 200
