"""Admission: a full pool queue answers 429 QUEUE_FULL with retry hints (POLICY-3004)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from orchestrator_core.config import mock_config
from test_harness.support import app_client, llm_step


def _until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_full_queue_is_429_with_retry_after_and_nothing_stored(
        tmp_path: pathlib.Path) -> None:
    """One slot busy, one Step queued, capacity 1: the third Step is refused."""
    cfg = mock_config(data_dir=str(tmp_path), replicas=1, slots_per_replica=1,
                      mock_options={"tokens_per_s": 50})
    cfg = msgspec.structs.replace(cfg, pools=[msgspec.structs.replace(
        cfg.pools[0], queue_capacity=1)])
    with app_client(cfg) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
        run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]

        def replica() -> dict[str, Any]:
            return dict(client.get("/v1/pools").json()[0]["replicas"][0])

        body = llm_step("q-0", max_tokens=500)
        assert client.post(f"/v1/runs/{run_id}/steps", json=body).status_code == 201
        _until(lambda: replica()["busy"] == 1)
        body = llm_step("q-1", max_tokens=500)
        assert client.post(f"/v1/runs/{run_id}/steps", json=body).status_code == 201
        _until(lambda: replica()["queued"] == 1)
        resp = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("q-2"))
        assert (resp.status_code, resp.json()["code"]) == (429, "QUEUE_FULL")
        assert resp.json()["retriable"] is True
        assert int(resp.headers["Retry-After"]) >= 1
        assert int(resp.headers["X-Backoff-Ms"]) == resp.json()["retry_after_ms"]
        assert sum(client.get(f"/v1/runs/{run_id}").json()["steps"].values()) == 2
        for step in ("q-0", "q-1"):
            sid = client.post(f"/v1/runs/{run_id}/steps",
                              json=llm_step(step, max_tokens=500)).json()["step_id"]
            client.post(f"/v1/steps/{sid}/cancel")


def test_the_server_wide_active_step_cap_is_429_admission_reject(
        tmp_path: pathlib.Path) -> None:
    """With max_active_steps 1 and one step streaming, the next is ADMISSION_REJECT."""
    cfg = msgspec.structs.replace(
        mock_config(data_dir=str(tmp_path), mock_options={"tokens_per_s": 50}),
        max_active_steps=1)
    with app_client(cfg) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
        run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
        first = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("a-0", max_tokens=500))
        resp = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("a-1"))
        assert (resp.status_code, resp.json()["code"]) == (429, "ADMISSION_REJECT")
        assert (resp.headers["Retry-After"], resp.headers["X-Backoff-Ms"]) == ("1", "1000")
        client.post(f"/v1/steps/{first.json()['step_id']}/cancel")
        _until(lambda: client.get(f"/v1/steps/{first.json()['step_id']}").json()["status"]
               == "cancelled")
        assert client.post(f"/v1/runs/{run_id}/steps", json=llm_step("a-1")).status_code == 201
