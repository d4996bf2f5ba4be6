"""The LLM job rules and the client's ``llm`` namespace, one unit at a time
(NERVE-4082, NERVE-4083, NERVE-4085, NERVE-4087, NERVE-4089)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import blake3
import httpx
import pytest

from contracts.errors import InvalidParams
from contracts.llm import AttachmentRef, DoneEvent, ErrorEvent, LlmEnqueue, TokenEvent
from orchestrator_core import llm_jobs
from orchestrator_core.rows import FlowRow, RunRow
from orchestrator_core.store import SqliteStore
from orchestratord.client import OrchestratorClient, StreamDisconnected

_SSE = {"content-type": "text/event-stream"}


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[SqliteStore]:
    """A fresh store with one Flow."""
    s = SqliteStore(tmp_path / "o.db")
    s.insert_flow(FlowRow(tenant="alpha", flow_id="flw_1", hash="b3:1", ast_ir="{}",
                          tools="[]", config="{}", labels="{}", created_at="t"))
    yield s
    s.close()


class TestMapFrames:
    """Each durable frame becomes one contract event with the same id [NERVE-4085]."""

    def test_escalation_is_a_log_line_narration_passes_and_metrics_are_dropped(self) -> None:
        """``escalation`` -> ``log``; ``narration`` keeps no id; ``metrics`` vanishes;
        a keep-alive comment stays."""
        chunk = (b'id: 4\nevent: escalation\ndata: {"kind":"replica","target":"r0",'
                 b'"from_state":"closed","to_state":"open","failures":3,"reason":"down"}\n\n'
                 b'event: metrics\ndata: {"tokens_out":1,"elapsed_ms":2,"tokens_per_s":0.5}'
                 b'\n\nevent: narration\ndata: {"text":"thinking"}\n\n: keep-alive\n\n')
        assert llm_jobs.map_frames(chunk) == (
            b'id: 4\nevent: log\ndata: {"type":"log","message":"escalation: replica r0 '
            b'closed -> open after 3 failures: down"}\n\n'
            b'event: narration\ndata: {"type":"narration","text":"thinking"}\n\n'
            b': keep-alive\n\n')

    def test_an_error_frame_keeps_its_code_message_and_data(self) -> None:
        """``error`` -> ``{"type": "error", "code", "message", "data"}``, no provenance."""
        chunk = (b'id: 9\nevent: error\ndata: {"code":"CANCELLED","message":"cancelled",'
                 b'"retriable":false,"data":{"step_id":"s"},"provenance":{"tokens_in":1,'
                 b'"tokens_out":0,"cost_usd":0.0,"policy_hash":"p",'
                 b'"price_table_version":"v"}}\n\n')
        assert llm_jobs.map_frames(chunk) == (
            b'id: 9\nevent: error\ndata: {"type":"error","code":"CANCELLED",'
            b'"message":"cancelled","data":{"step_id":"s"}}\n\n')


class TestBounds:
    """What a job brings is bounded before anything is stored [NERVE-4087]."""

    def test_attachments_decode_by_name_with_their_sha256(self) -> None:
        """Names sorted; standard base64; sha256 hex and size of the bytes."""
        got = llm_jobs.decode_attachments({"z": "aGk=", "a": ""})
        assert got == [
            (AttachmentRef(name="a", sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934c"
                                            "a495991b7852b855", size=0), b""),
            (AttachmentRef(name="z", sha256="8f434346648f6b96df89dda901c5176b10a6d83961dd3c1a"
                                            "c88b59b2dc327aa4", size=2), b"hi")]

    @pytest.mark.parametrize("text", ["aGk", "aG k=", "aGk=\n", "a-_="])
    def test_base64_that_is_not_standard_is_refused(self, text: str) -> None:
        """Missing padding, spaces, line breaks and the URL alphabet are refused."""
        with pytest.raises(InvalidParams) as refused:
            llm_jobs.decode_attachments({"f": text})
        assert refused.value.data == {"field": "attachments.f", "reason": "base64"}

    def test_metadata_at_the_depth_limit_passes_one_deeper_is_refused(self) -> None:
        """The object itself is level 1; level 8 passes, level 9 is ``depth``."""
        deep: dict[str, object] = {}
        for _ in range(llm_jobs.MAX_METADATA_DEPTH - 1):
            deep = {"d": deep}
        llm_jobs.check_metadata(deep)
        with pytest.raises(InvalidParams) as refused:
            llm_jobs.check_metadata({"d": deep})
        assert refused.value.data == {"field": "metadata", "reason": "depth",
                                      "limit_depth": 8}


class TestIdentity:
    """The derived client_token and the tenant's Run [NERVE-4082]."""

    def test_the_key_leaves_out_client_token_and_run_id_only(self) -> None:
        """Bodies differing in ``client_token`` or ``run_id`` share a key; metadata
        changes it."""
        base = LlmEnqueue(model="m", prompt="p", metadata={"a": 1})
        same = LlmEnqueue(model="m", prompt="p", metadata={"a": 1}, run_id="run_x",
                          client_token="t")
        other = LlmEnqueue(model="m", prompt="p", metadata={"a": 2})
        assert llm_jobs.job_key(base) == llm_jobs.job_key(same) != llm_jobs.job_key(other)
        assert llm_jobs.job_key(base) == "b3:" + blake3.blake3(
            b'{"metadata":{"a":1},"model":"m","prompt":"p"}').hexdigest()

    def test_the_tenant_run_is_made_once_and_replaced_once_it_is_not_active(
            self, store: SqliteStore) -> None:
        """The first call creates, the next finds it; a cancelled Run is replaced."""
        made: list[str] = []

        def create() -> str:
            run_id = f"run_{len(made)}"
            store.insert_run(RunRow(run_id=run_id, flow_id="flw_1", flow_hash="b3:1",
                                    mode="record", seed=1, replay_of=None, body="{}",
                                    policy_hash="p", status="active", created_at="t",
                                    tenant="alpha"))
            made.append(run_id)
            return run_id

        first = llm_jobs.tenant_run(store, "alpha", create)
        again = llm_jobs.tenant_run(store, "alpha", create)
        store.set_run_status(first, "cancelled")
        third = llm_jobs.tenant_run(store, "alpha", create)
        assert (first, again, third, made) == ("run_0", "run_0", "run_1", ["run_0", "run_1"])


class TestAsyncLlmStream:
    """``OrchestratorClient.llm.stream`` decodes events and never retries [NERVE-4089]."""

    @pytest.mark.anyio
    async def test_events_until_error_then_stop(self) -> None:
        """Typed events; the ``error`` event ends the iteration (it is not raised)."""
        body = (b'id: 1\nevent: token\ndata: {"type":"token","text":"a"}\n\n'
                b'id: 2\nevent: error\ndata: {"type":"error","code":"CANCELLED",'
                b'"message":"c"}\n\n')
        transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body,
                                                                 headers=_SSE))
        async with OrchestratorClient("http://o", transport=transport) as oc:
            got = [e async for e in oc.llm.stream("stp_1")]
        assert got == [TokenEvent(text="a"), ErrorEvent(code="CANCELLED", message="c")]

    @pytest.mark.anyio
    async def test_a_204_after_the_end_yields_nothing(self) -> None:
        """A resume at the terminal event has nothing to read."""
        seen: list[str | None] = []

        def serve(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers.get("last-event-id"))
            return httpx.Response(204)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            got = [e async for e in oc.llm.stream("stp_1", last_event_id=7)]
        assert (got, seen) == ([], ["7"])

    @pytest.mark.anyio
    async def test_a_clean_end_without_done_raises_once(self) -> None:
        """The events are yielded, then ``ERR_STREAM_DISCONNECTED`` with the last id;
        one request only."""
        calls: list[str] = []
        body = b'id: 0\nevent: log\ndata: {"type":"log","message":"started"}\n\n'

        def serve(request: httpx.Request) -> httpx.Response:
            calls.append(request.url.path)
            return httpx.Response(200, content=body, headers=_SSE)

        got: list[object] = []

        async def read(oc: OrchestratorClient) -> None:
            async for event in oc.llm.stream("stp_1"):
                got.append(event)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            with pytest.raises(StreamDisconnected) as cut:
                await read(oc)
        assert (len(got), cut.value.last_event_id, calls) == (
            1, 0, ["/v1/llm/jobs/stp_1/events"])
        assert DoneEvent() not in got


class TestRefusalFields:
    """A refused job names the field of the job's own body."""

    def test_an_unknown_model_names_model_and_a_step_names_input_model(
            self, client: Any) -> None:
        """[NERVE-4082] The same unknown model is ``field`` ``model`` on
        ``POST /v1/llm/jobs`` and ``input.model`` on ``POST /v1/runs/{id}/steps``."""
        job = client.post("/v1/llm/jobs", json={"model": "mock:nope", "prompt": "hi"})
        flow = client.post("/v1/flows", json={"ast_ir": {}}).json()["flow_id"]
        run_id = client.post(f"/v1/flows/{flow}/runs", json={}).json()["run_id"]
        step = client.post(f"/v1/runs/{run_id}/steps", json={
            "type": "llm_call", "client_token": "t",
            "input": {"model": "mock:nope", "prompt": "hi"}})
        assert [(r.status_code, r.json()["code"], r.json()["data"]) for r in (job, step)] == [
            (400, "INVALID_MODEL", {"field": "model", "model": "mock:nope"}),
            (400, "INVALID_MODEL", {"field": "input.model", "model": "mock:nope"})]
