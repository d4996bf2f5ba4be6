"""The blocking ``Client`` does what ``AsyncClient`` does, over every route, against a
live in-process server [NERVE-4110] [NERVE-4111] [NERVE-4112]."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from contracts.errors import InvalidModel, NotFound, QueueFull
from contracts.events import EndData, StartedData, TokenData
from contracts.facts import BUILTIN_FACT_SCHEMA
from contracts.steps import CancelAccepted, Step
from orchestrator_core.config import ServerConfig
from orchestratord.client import (
    ERR_STREAM_DISCONNECTED,
    AsyncClient,
    Client,
    OrchestratorClient,
    SyncSubmittedStream,
)
from test_harness.support import MOCK_MODEL, app_client, llm_step

Handler = Callable[[httpx.Request], httpx.Response]


def bridge(c: TestClient[Any]) -> Handler:
    """A transport handler that sends each request, body and headers included, to the
    in-process app (the ``Host`` left to the app's own loopback base URL)."""
    def serve(request: httpx.Request) -> httpx.Response:
        headers = {k: v for k, v in request.headers.items()
                   if k not in ("host", "content-length")}
        resp = c.request(request.method, request.url.raw_path.decode(),
                         content=request.content, headers=headers)
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)
    return serve


def _body(prompt: str, max_tokens: int = 3) -> dict[str, Any]:
    return {"type": "llm_call", "input": {"model": MOCK_MODEL, "prompt": prompt,
                                          "params": {"max_tokens": max_tokens}}}


@pytest.fixture
def live(mock_cfg: ServerConfig) -> Iterator[Handler]:
    """A transport handler onto a live in-process server on the mock engine."""
    with app_client(mock_cfg) as c:
        yield bridge(c)


class TestSyncClient:
    """``Client`` over the native routes [NERVE-4110]."""

    def test_a_flow_a_run_and_a_step_with_its_typed_frames(self, live: Handler) -> None:
        """``run_step`` answers the finished Step and its frames decoded into the
        ``contracts/`` Structs; ``stream`` re-reads them, resuming after an id; the
        Step's prompt and the tenant-wide Run list read back."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            flow = oc.create_flow({"sync": 1})
            run = oc.create_run(flow.flow_id, seed=5)
            done = oc.run_step(run.run_id, _body("hello"))
            again = list(oc.stream(done.step.step_id))
            rest = list(oc.stream(done.step.step_id, last_event_id=2))
            got_flow, got_run = oc.get_flow(flow.flow_id), oc.get_run(run.run_id)
            by_hash = oc.get_flow_by_hash(flow.hash)
            prompt = oc.get_prompt(done.step.step_id)
            everywhere, _ = oc.list_all_runs()
        assert ([type(f.data).__name__ for f in done.frames],
                [f.id for f in done.frames]) == (
            ["StartedData", "TokenData", "TokenData", "TokenData", "EndData"], [0, 1, 2, 3, 4])
        assert isinstance(done.frames[0].data, StartedData)
        assert isinstance(done.frames[-1].data, EndData)
        assert (done.step.status, done.text, done.output, again, [f.id for f in rest]) == (
            "succeeded", "policy reads is", {"text": "policy reads is"}, done.frames, [3, 4])
        assert (got_flow.flow_id, got_run.run_id, by_hash.flow_id) == (
            flow.flow_id, run.run_id, flow.flow_id)
        assert (prompt.rendered, prompt.template, [r.run_id for r in everywhere]) == (
            "hello", None, [run.run_id])

    def test_submit_stream_names_the_step_and_a_repeat_is_not_created(
            self, live: Handler) -> None:
        """The submission's stream carries ``X-Step-Id``; the same ``client_token``
        again answers the same Step with ``created`` False."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            run = oc.create_run(oc.create_flow({"s": 2}).flow_id)
            with oc.submit_stream(run.run_id, {**_body("x"), "client_token": "t"}) as first:
                events = [f.event for f in first.frames()]
            with oc.submit_stream(run.run_id, {**_body("x"), "client_token": "t"}) as second:
                tokens = [f.data for f in second.frames() if isinstance(f.data, TokenData)]
        assert isinstance(first, SyncSubmittedStream)
        assert (first.created, second.created, second.step_id, events, len(tokens)) == (
            True, False, first.step_id, ["started", "token", "token", "token", "end"], 3)

    def test_lists_facts_checkpoints_and_capabilities(self, live: Handler) -> None:
        """Every list pages with its cursor; a Fact and a Checkpoint read back by id;
        discovery names the mock model."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            flow = oc.create_flow({"l": 3})
            run = oc.create_run(flow.flow_id, labels={"k": "v"})
            steps = [oc.submit_step(run.run_id, _body(f"p{i}")).step_id for i in range(3)]
            page, after = oc.list_steps(run.run_id, limit=2)
            tail, end = oc.list_steps(run.run_id, limit=2, after=after)
            runs, _ = oc.list_runs(flow.flow_id, label="k:v")
            fact = oc.append_fact(run.run_id, {"type": "seen", "schema_uri": BUILTIN_FACT_SCHEMA,
                                               "data": {"n": 1}})
            ckp = oc.create_checkpoint(run.run_id, [1, 2])
            cancelled = oc.cancel_run(run.run_id)
            flow_facts, _ = oc.list_flow_facts(flow.flow_id)
            ckps, _ = oc.list_checkpoints(run.run_id)
            caps = oc.capabilities()
            facts = oc.facts(run.run_id, type="seen")
            got = (oc.get_fact(fact.fact_id).data, oc.get_checkpoint(ckp.checkpoint_id).snapshot)
            health, ready = oc.health(), oc.ready()
            pools = oc.pools()
            pool = oc.get_pool(pools[0].pool_id)
        assert ([s.step_id for s in page], after, [s.step_id for s in tail], end) == (
            steps[:2], steps[1], steps[2:], None)
        assert ([r.run_id for r in runs], cancelled.status, got) == (
            [run.run_id], "cancelled", ({"n": 1}, [1, 2]))
        assert ([f.fact_id for f in flow_facts], [f.fact_id for f in facts],
                [c.checkpoint_id for c in ckps]) == (
            [fact.fact_id], [fact.fact_id], [ckp.checkpoint_id])
        assert (MOCK_MODEL in [m.id for m in caps.models], health["status"], ready,
                pool.pool_id) == (True, "ok", True, pools[0].pool_id)

    def test_a_runs_facts_stream_as_typed_facts(self, live: Handler) -> None:
        """``stream_facts`` decodes each ``fact`` frame into a Fact, skips keep-alives,
        ends quietly when the server closes the stream, and a broken connection is
        ``ERR_STREAM_DISCONNECTED`` of kind ``run`` naming the last seq."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            run = oc.create_run(oc.create_flow({"f": 6}).flow_id)
            fact = oc.append_fact(run.run_id, {"type": "seen", "data": {"n": 2},
                                               "schema_uri": BUILTIN_FACT_SCHEMA})
        body = (b"id: 0\nevent: fact\ndata: " + msgspec.json.encode(fact)
                + b"\n\n: keep-alive\n\n")

        def broken() -> Iterator[bytes]:
            yield body
            raise httpx.ReadError("connection reset")

        def serve(request: httpx.Request) -> httpx.Response:
            content = body if request.headers.get("last-event-id") is None else broken()
            return httpx.Response(200, content=content,
                                  headers={"content-type": "text/event-stream"})

        with Client("http://o", transport=httpx.MockTransport(serve)) as oc:
            streamed = list(oc.stream_facts(run.run_id))
            with pytest.raises(ERR_STREAM_DISCONNECTED) as cut:
                list(oc.stream_facts(run.run_id, last_event_id=0))
        assert (streamed, cut.value.kind, cut.value.step_id, cut.value.last_event_id) == (
            [fact], "run", run.run_id, 0)

    def test_refusals_are_typed_and_cancel_answers_its_wire_type(self, live: Handler) -> None:
        """An unknown model is ``InvalidModel`` naming the model, an unknown Step
        ``NotFound``; cancelling a finished Step answers the Step itself."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            run = oc.create_run(oc.create_flow({"e": 4}).flow_id)
            with pytest.raises(InvalidModel) as bad:
                oc.submit_step(run.run_id, llm_step("bad", model="mock:nope"))
            with pytest.raises(NotFound):
                oc.get_step("stp_" + "0" * 24)
            done = oc.run_step(run.run_id, _body("c"))
            after = oc.cancel_step(done.step.step_id)
        assert (bad.value.message, bad.value.data) == (
            "model 'mock:nope' is not served here; see GET /v1/capabilities",
            {"field": "input.model", "model": "mock:nope"})
        assert (isinstance(after, Step), isinstance(after, CancelAccepted)) == (True, False)


class TestSyncLifecycles:
    """The ``llm`` namespace and the Run lifecycle on the blocking client [NERVE-4110]."""

    def test_discover_enqueue_stream_and_cancel_a_job(self, live: Handler) -> None:
        """``llm.capabilities`` names the mock model; a job enqueued with a JSON-schema
        contract streams a ``log``, tokens and ``done``; cancelling it once finished
        answers the finished job."""
        contract = {"type": "object", "properties": {"summary": {"type": "string"}},
                    "required": ["summary"]}
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            caps = oc.llm.capabilities()
            job = oc.llm.enqueue(caps.models[0].id, "Summarize.", response_contract=contract,
                                 metadata={"request_id": "req-42"})
            events = list(oc.llm.stream(job.id))
            after = list(oc.llm.stream(job.id, last_event_id=10_000))
            info = oc.llm.cancel(job.id)
            got = oc.llm.get(job.id)
        kinds = [type(e).__name__ for e in events]
        assert (caps.models[0].id, job.model, kinds[0], kinds[-1], set(kinds[1:-1])) == (
            "mock:echo-1", "mock:echo-1", "LogEvent", "DoneEvent", {"TokenEvent"})
        assert (after, info, got.metadata) == ([], got, {"request_id": "req-42"})

    def test_close_a_run_and_read_its_stream(self, live: Handler) -> None:
        """``close_run`` closes the Run ``completed``; ``stream_run`` reads its Step's
        frames then ``run_end``, each with its run position."""
        with Client("http://o", transport=httpx.MockTransport(live)) as oc:
            run = oc.create_run(oc.create_flow({"r": 7}).flow_id)
            done = oc.run_step(run.run_id, _body("close me"))
            closed = oc.close_run(run.run_id, "completed")
            events = list(oc.stream_run(run.run_id))
        assert (closed.status, [(e.position, e.event) for e in events]) == (
            "completed", [(0, "started"), (1, "token"), (2, "token"), (3, "token"),
                          (4, "end"), (5, "run_end")])
        assert len(done.frames) == 5


class TestBothClientsAgree:
    """The same interpreter code gets the same answers from either client [NERVE-4110]."""

    @pytest.mark.anyio
    async def test_derived_tokens_and_outputs_are_equal(self, mock_cfg: ServerConfig) -> None:
        """Two submissions without ``client_token`` get the same derived tokens and the
        same outputs from ``Client`` and ``AsyncClient``; the old name is the async one."""
        with app_client(mock_cfg) as c:
            serve = bridge(c)
            with Client("http://o", transport=httpx.MockTransport(serve)) as sc:
                run_a = sc.create_run(sc.create_flow({"p": 5}).flow_id, seed=9).run_id
                sync = [sc.run_step(run_a, _body("same")) for _ in range(2)]
            async with AsyncClient("http://o", transport=httpx.MockTransport(serve)) as ac:
                run_b = (await ac.create_run((await ac.create_flow({"p": 5})).flow_id,
                                             seed=9)).run_id
                asyn = [await ac.run_step(run_b, _body("same")) for _ in range(2)]
        assert [r.step.client_token for r in sync] == [r.step.client_token for r in asyn]
        assert [r.output for r in sync] == [r.output for r in asyn]
        assert [r.step.client_token.rsplit(":", 1)[1] for r in sync] == ["0", "1"]
        assert OrchestratorClient is AsyncClient


_HEAD = (b'id: 0\nevent: started\ndata: {"type":"llm_call","queue_position":0,'
         b'"predicted_start_ms":0}\n\n')


class TestRetries:
    """Nothing is retried unless ``max_retries`` says so [NERVE-4112] [NERVE-4072]."""

    @staticmethod
    def _flaky(sent: list[str], failures: int) -> Handler:
        def serve(request: httpx.Request) -> httpx.Response:
            sent.append(f"{request.method} {request.url.path} {request.content.decode()}")
            if len(sent) <= failures:
                return httpx.Response(429, json={"code": "QUEUE_FULL", "message": "full",
                                                 "retriable": True, "retry_after_ms": 1})
            return httpx.Response(201, json={"run_id": "r"}) if "/runs" in request.url.path \
                and request.url.path.endswith("/runs") else httpx.Response(
                    200, json={"status": "ok", "server_version": "x"})
        return serve

    def test_by_default_a_retriable_refusal_is_raised_after_one_attempt(self) -> None:
        """``QUEUE_FULL`` with ``retry_after_ms`` is raised at once: one request sent."""
        sent: list[str] = []
        with Client("http://o", transport=httpx.MockTransport(self._flaky(sent, 1))) as oc, \
                pytest.raises(QueueFull):
            oc.health()
        assert sent == ["GET /health "]

    @pytest.mark.anyio
    async def test_configured_retries_resend_only_what_is_safe(self) -> None:
        """With ``max_retries=2`` a GET is sent again after ``QUEUE_FULL``, once the
        server's ``retry_after_ms`` has passed on the injected clock, and succeeds; a Run
        creation (a non-idempotent POST without a client_token) is not."""
        sent: list[str] = []
        waits: list[float] = []

        async def nap(seconds: float) -> None:
            waits.append(seconds)

        async with AsyncClient("http://o", max_retries=2, sleep=nap,
                               transport=httpx.MockTransport(self._flaky(sent, 1))) as oc:
            health = await oc.health()
        posted: list[str] = []
        with Client("http://o", max_retries=2,
                    transport=httpx.MockTransport(self._flaky(posted, 1))) as sc, \
                pytest.raises(QueueFull):
            sc.create_run("flw_1")
        assert (health["status"], sent, waits, posted) == (
            "ok", ["GET /health ", "GET /health "], [0.001], ["POST /v1/flows/flw_1/runs {}"])

    def test_a_retried_submission_carries_the_same_derived_token(self) -> None:
        """A submission without a client_token is retried with the token derived once,
        so the server sees one Step; a stream cut mid-way is raised, not resent."""
        sent: list[bytes] = []

        def serve(request: httpx.Request) -> httpx.Response:
            sent.append(request.content)
            if len(sent) == 1:
                return httpx.Response(503, json={"code": "POOL_UNAVAILABLE", "message": "x",
                                                 "retriable": True, "retry_after_ms": 1})
            return httpx.Response(201, content=_HEAD, headers={
                "content-type": "text/event-stream", "x-step-id": "stp_1"})

        waits: list[float] = []
        with Client("http://o", max_retries=3, sleep=waits.append,
                    transport=httpx.MockTransport(serve)) as oc, \
                pytest.raises(ERR_STREAM_DISCONNECTED) as cut, \
                oc.submit_stream("run_1", {"type": "llm_call"}) as sub:
            list(sub.frames())
        assert (len(sent), sent[0] == sent[1], b'"client_token":"cli:' in sent[0],
                cut.value.last_event_id, waits) == (2, True, True, 0, [0.001])
