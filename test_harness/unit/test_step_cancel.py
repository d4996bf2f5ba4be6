"""Step cancel answers: 202 ``{status: "cancelling"}`` while live, 200 the finished Step."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient

from contracts.steps import CancelAccepted, Step, StepStatus
from orchestrator_core.config import ServerConfig
from orchestratord.client import OrchestratorClient
from test_harness.support import app_client, llm_step


def _finished_step(c: TestClient[Any]) -> str:
    """Submit an ``llm_call`` on the mock engine and wait (at most 10 s) until it ends."""
    flow = c.post("/v1/flows", json={"ast_ir": {}}).json()["flow_id"]
    run = c.post(f"/v1/flows/{flow}/runs", json={}).json()["run_id"]
    step: str = c.post(f"/v1/runs/{run}/steps", json=llm_step("t0")).json()["step_id"]
    deadline = time.monotonic() + 10.0
    while not StepStatus(c.get(f"/v1/steps/{step}").json()["status"]).terminal \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    return step


class TestCancelOfAFinishedStep:
    """A finished Step's cancel changes nothing and answers it, as before NERVE-4070."""

    def test_cancelling_a_finished_step_twice_answers_200_with_it_unchanged(
            self, mock_cfg: ServerConfig) -> None:
        """[NERVE-4070] Both cancels of a succeeded Step answer 200 with the same Step."""
        with app_client(mock_cfg) as c:
            step = _finished_step(c)
            before = c.get(f"/v1/steps/{step}").json()
            first = c.post(f"/v1/steps/{step}/cancel")
            second = c.post(f"/v1/steps/{step}/cancel")
        assert before["status"] == "succeeded"
        assert (first.status_code, first.json()) == (200, before)
        assert (second.status_code, second.json()) == (200, before)


class TestClientCancel:
    """``OrchestratorClient.cancel_step`` decodes either answer into its wire type."""

    @pytest.mark.anyio
    async def test_a_202_decodes_to_cancel_accepted(self) -> None:
        """[NERVE-4070] The 202 body ``{"status": "cancelling"}`` is a CancelAccepted."""
        seen: list[str] = []

        def serve(request: httpx.Request) -> httpx.Response:
            seen.append(f"{request.method} {request.url.path}")
            return httpx.Response(202, json={"status": "cancelling"})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            answer = await oc.cancel_step("stp_0000000000000000000000aa")
        assert answer == CancelAccepted(status="cancelling")
        assert seen == ["POST /v1/steps/stp_0000000000000000000000aa/cancel"]

    @pytest.mark.anyio
    async def test_a_200_decodes_to_the_finished_step(self, mock_cfg: ServerConfig) -> None:
        """[NERVE-4070] The cancel of a finished Step returns that Step, unchanged."""
        with app_client(mock_cfg) as c:
            step = _finished_step(c)

            def serve(request: httpx.Request) -> httpx.Response:
                resp = c.request(request.method, request.url.raw_path.decode(),
                                 content=request.content,
                                 headers={"content-type": "application/json"})
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                before = await oc.get_step(step)
                answer = await oc.cancel_step(step)
        assert isinstance(answer, Step)
        assert (answer.status, answer) == (StepStatus.SUCCEEDED, before)
