"""The run stream's memory bound (NERVE-4102) and the client's Run lifecycle methods
(NERVE-4107)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from contracts.errors import Conflict
from contracts.run_life import RunEndData, RunFrame
from orchestrator_core import run_stream
from orchestrator_core.config import ServerConfig
from orchestrator_core.service import Orchestrator
from orchestratord.client import OrchestratorClient, StreamDisconnected
from test_harness.support import app_client, llm_step, parse_sse


def _closed_run(c: Any, steps: int = 2) -> str:
    """A Run with ``steps`` llm_calls read to their end, closed ``completed``."""
    flow = c.post("/v1/flows", json={"ast_ir": {}}).json()["flow_id"]
    run_id: str = c.post(f"/v1/flows/{flow}/runs", json={"seed": 3}).json()["run_id"]
    for i in range(steps):
        step = c.post(f"/v1/runs/{run_id}/steps", json=llm_step(f"k{i}")).json()
        with c.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
            b"".join(s.iter_bytes())
    assert c.post(f"/v1/runs/{run_id}/close", json={"status": "completed"}).status_code == 200
    return run_id


class TestPages:
    """A reader holds one page at a time (NERVE-4102)."""

    def test_each_write_carries_at_most_one_page_of_frames(
            self, mock_cfg: ServerConfig, monkeypatch: pytest.MonkeyPatch) -> None:
        """[NERVE-4102] With pages of 4 frames the stream is written 4 frames at a time
        (the last write adds ``run_end``), and the writes make the whole stream."""
        monkeypatch.setattr(run_stream, "PAGE_FRAMES", 4)
        with app_client(mock_cfg) as c:
            run_id = _closed_run(c)
            with c.stream("GET", f"/v1/runs/{run_id}/stream") as s:
                whole = b"".join(s.iter_bytes())
            orch: Orchestrator = c.app.state.orch
            chunks: list[bytes] = []

            async def write(chunk: bytes) -> None:
                chunks.append(chunk)

            stream = orch.runs.open_stream(run_id, None, 30.0, "default")
            assert c.blocking_portal.call(stream.pump, write) is True
        sizes = [len(parse_sse(chunk)) for chunk in chunks]
        frames = len(parse_sse(whole))
        assert sizes == [4] * ((frames - 1) // 4) + [(frames - 1) % 4 + 1]
        assert b"".join(chunks) == whole


class TestClient:
    """``close_run`` and ``stream_run`` (NERVE-4107)."""

    @pytest.mark.anyio
    async def test_the_client_closes_a_run_and_reads_its_stream(
            self, mock_cfg: ServerConfig) -> None:
        """[NERVE-4107] ``close_run`` returns the closed Run (and raises Conflict for
        another status); ``stream_run`` yields decoded events up to ``run_end``, resumes
        after a position, and yields nothing after ``run_end``."""
        with app_client(mock_cfg) as c:
            flow = c.post("/v1/flows", json={"ast_ir": {}}).json()["flow_id"]
            run_id = c.post(f"/v1/flows/{flow}/runs", json={"seed": 3}).json()["run_id"]
            step = c.post(f"/v1/runs/{run_id}/steps", json=llm_step("only")).json()
            with c.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                own = parse_sse(b"".join(s.iter_bytes()))

            def serve(request: httpx.Request) -> httpx.Response:
                headers = {k: v for k, v in request.headers.items()
                           if k in ("content-type", "last-event-id")}
                resp = c.request(request.method, request.url.raw_path.decode(),
                                 headers=headers, content=request.content)
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                run = await oc.close_run(run_id, "completed")
                with pytest.raises(Conflict) as other:
                    await oc.close_run(run_id, "failed")
                events = [e async for e in oc.stream_run(run_id)]
                rest = [e async for e in oc.stream_run(run_id, last_event_id=len(own) - 2)]
                after = [e async for e in oc.stream_run(run_id, last_event_id=len(own))]
        assert (run.status.value, run.summary is not None) == ("completed", True)
        assert other.value.data == {"field": "status", "run_id": run_id, "status": "completed"}
        assert [(e.position, e.event) for e in events] == [
            *((f["id"], f["event"]) for f in own), (len(own), "run_end")]
        first = events[0].data
        assert isinstance(first, RunFrame)
        assert (first.step_id, first.step_type, first.seq, bytes(first.data)) == (
            step["step_id"], "llm_call", 0, own[0]["data"].encode())
        assert events[-1].data == RunEndData(run_id=run_id, status="completed",
                                             summary=run.summary)
        assert [e.position for e in rest] == [len(own) - 1, len(own)]
        assert after == []

    @pytest.mark.anyio
    async def test_a_run_stream_cut_before_run_end_raises_stream_disconnected(self) -> None:
        """[NERVE-4107] A stream that ends before ``run_end`` is ERR_STREAM_DISCONNECTED,
        naming the last position received."""
        body = (b'id: 0\nevent: token\ndata: {"step_id":"stp_1","step_type":"llm_call",'
                b'"seq":1,"data":{"i":0}}\n\n')

        def serve(_request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body)

        got: list[int] = []

        async def read(oc: OrchestratorClient) -> None:
            async for event in oc.stream_run("run_x"):
                got.append(event.position)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            with pytest.raises(StreamDisconnected) as cut:
                await read(oc)
        assert (got, cut.value.step_id, cut.value.last_event_id, cut.value.name) == (
            [0], "run_x", 0, "ERR_STREAM_DISCONNECTED")


class TestSummary:
    """The summary's ``steps_hash`` (NERVE-4104)."""

    def test_a_replay_run_has_its_recordings_steps_hash(self, mock_cfg: ServerConfig) -> None:
        """[NERVE-4104] A replay of a recording with one attempt per token, closed the same
        way, has the recording's ``steps_hash``; a record Run of other prompts has
        another."""
        with app_client(mock_cfg) as c:
            rec = _closed_run(c)
            flow = c.get(f"/v1/runs/{rec}").json()["flow_id"]
            rep = c.post(f"/v1/flows/{flow}/runs",
                         json={"mode": "replay", "replay_of": rec}).json()["run_id"]
            for i in range(2):
                assert c.post(f"/v1/runs/{rep}/steps",
                              json=llm_step(f"k{i}")).status_code == 201
            c.post(f"/v1/runs/{rep}/close", json={"status": "completed"})
            other = c.post(f"/v1/flows/{flow}/runs", json={"seed": 3}).json()["run_id"]
            step = c.post(f"/v1/runs/{other}/steps", json=llm_step("k0", "other")).json()
            with c.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                b"".join(s.iter_bytes())
            c.post(f"/v1/runs/{other}/close", json={"status": "completed"})
            hashes = [c.get(f"/v1/runs/{r}").json()["summary"]["steps_hash"]
                      for r in (rec, rep, other)]
        assert (hashes[0] == hashes[1], hashes[0] == hashes[2]) == (True, False)
