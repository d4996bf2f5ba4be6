"""The Python client derives a missing ``client_token`` instead of inventing one."""

from __future__ import annotations

import httpx
import pytest

from contracts.errors import Internal
from orchestrator_core.config import ServerConfig
from orchestratord.client import OrchestratorClient
from orchestratord.client_tokens import StepTokens
from test_harness.support import MOCK_MODEL, app_client


def _body(prompt: str) -> dict[str, object]:
    return {"type": "llm_call", "input": {"model": MOCK_MODEL, "prompt": prompt,
                                          "params": {"max_tokens": 3}}}


class TestDerivedTokens:
    """[NERVE-4071] A submission without ``client_token`` gets ``cli:<hash>:<n>``."""

    def test_the_same_body_counts_up_per_run_and_a_new_counter_starts_over(self) -> None:
        """Equal bodies (key order aside) in one Run get occurrences 0 and 1; another Run
        and a fresh counter start again at 0 with the same hash."""
        tokens, fresh = StepTokens(), StepTokens()
        a = tokens.claim("run_1", {"x": 1, "y": [1.0]})
        b = tokens.claim("run_1", {"y": [1], "x": 1})
        c = tokens.claim("run_2", {"x": 1, "y": [1]})
        d = fresh.claim("run_1", {"x": 1, "y": [1]})
        key = a.split(":")[1]
        assert (len(key), a, b, c, d) == (64, f"cli:{key}:0", f"cli:{key}:1",
                                          f"cli:{key}:0", f"cli:{key}:0")

    @pytest.mark.anyio
    async def test_a_given_token_is_kept(self) -> None:
        """A body that names its ``client_token`` is sent as it is."""
        seen: list[bytes] = []

        def serve(request: httpx.Request) -> httpx.Response:
            seen.append(request.content)
            return httpx.Response(500, json={"code": "INTERNAL", "message": "x",
                                             "retriable": False})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            with pytest.raises(Internal):
                await oc.submit_step("run_1", {"client_token": "mine", "type": "t"})
        assert seen == [b'{"client_token":"mine","type":"t"}']

    @pytest.mark.anyio
    async def test_code_without_tokens_replays_against_its_recording(
            self, mock_cfg: ServerConfig) -> None:
        """Interpreter code that passes no ``client_token``, run by one client against a
        record Run and by a new client against a replay Run of it, is answered from the
        recording: the same outputs and no 409 ``NONDETERMINISM``."""
        with app_client(mock_cfg) as c:
            def serve(request: httpx.Request) -> httpx.Response:
                headers = {"content-type": "application/json"}
                if "last-event-id" in request.headers:
                    headers["last-event-id"] = request.headers["last-event-id"]
                if request.method == "GET":
                    headers = {}
                resp = c.request(request.method, request.url.raw_path.decode(),
                                 content=request.content, headers=headers)
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

            async def interpreter(oc: OrchestratorClient,
                                  run_id: str) -> list[tuple[str, str, str]]:
                outs: list[tuple[str, str, str]] = []
                for prompt in ("same", "same", "other"):
                    res = await oc.run_step(run_id, _body(prompt))
                    outs.append((res.step.status, res.text, res.step.client_token))
                return outs

            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                flow = (await oc.create_flow({"replay": "me"})).flow_id
                rec = (await oc.create_run(flow, mode="record", seed=7)).run_id
                recorded = await interpreter(oc, rec)
            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                rep = (await oc.create_run(flow, mode="replay", replay_of=rec)).run_id
                replayed = await interpreter(oc, rep)
        assert replayed == recorded
        assert [t[2].rsplit(":", 1)[1] for t in recorded] == ["0", "1", "0"]
