"""A Step submission answered with the Step's own stream, in one round trip (STREAM-2010)."""

from __future__ import annotations

import inspect
import pathlib
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from orchestrator_core.config import ServerConfig
from orchestratord.auth import require_token
from orchestratord.client import OrchestratorClient
from orchestratord.sse import accepts_event_stream
from test_harness.support import app_client, llm_step, parse_sse, table_counts

SSE = {"Accept": "text/event-stream"}


def _run(client: TestClient[Any], headers: dict[str, str] | None = None) -> str:
    flow = client.post("/v1/flows", json={"ast_ir": {"submit": "stream"}},
                       headers=headers).json()["flow_id"]
    run = client.post(f"/v1/flows/{flow}/runs", json={"mode": "record", "seed": 5},
                      headers=headers).json()
    return str(run["run_id"])


def _submit(client: TestClient[Any], run_id: str, body: dict[str, Any],
            headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    with client.stream("POST", f"/v1/runs/{run_id}/steps", json=body,
                       headers=headers) as resp:
        raw = b"".join(resp.iter_bytes())
        return resp.status_code, dict(resp.headers), raw


class TestSubmitStream:
    """``POST /v1/runs/{id}/steps`` with ``Accept: text/event-stream`` [STREAM-2010]."""

    def test_a_new_step_answers_201_with_its_whole_stream(
            self, client: TestClient[Any]) -> None:
        """The answer is 201 ``text/event-stream`` naming the Step, and its body is
        exactly what ``GET /v1/steps/{id}/stream`` returns for the finished Step."""
        run_id = _run(client)
        status, headers, raw = _submit(client, run_id, llm_step("one", max_tokens=4), SSE)
        step_id = headers["x-step-id"]
        with client.stream("GET", f"/v1/steps/{step_id}/stream") as again:
            reread = b"".join(again.iter_bytes())
        assert (status, headers["content-type"], headers["location"],
                headers["cache-control"], "x-correlation-id" in headers) == (
            201, "text/event-stream; charset=utf-8", f"/v1/steps/{step_id}", "no-cache",
            True)
        assert [f["event"] for f in parse_sse(raw)] == [
            "started", "token", "token", "token", "token", "end"]
        assert raw == reread

    def test_the_stream_answer_carries_the_runs_budget_headers(
            self, client: TestClient[Any]) -> None:
        """A Run with an output budget gets ``X-Budget-Tokens-Out-Remaining`` on the stream
        answer (what is left once this Step's reservation is held); a Run without budgets
        gets no ``X-Budget-*`` header [POLICY-3000]."""
        flow = client.post("/v1/flows", json={"ast_ir": {"b": 1}}).json()["flow_id"]
        capped = client.post(f"/v1/flows/{flow}/runs", json={
            "mode": "record", "seed": 5, "budgets": {"max_tokens_out": 100}}).json()["run_id"]
        _status, headers, _raw = _submit(client, capped, llm_step("b", max_tokens=4), SSE)
        _status, plain, _raw = _submit(client, _run(client), llm_step("p", max_tokens=4), SSE)
        assert headers["x-budget-tokens-out-remaining"] == "96"
        assert [h for h in plain if h.startswith("x-budget-")] == []

    def test_a_repeated_token_answers_200_with_the_same_stream_and_runs_nothing(
            self, client: TestClient[Any], mock_cfg: ServerConfig) -> None:
        """Resubmitting the same body is 200 with the same Step's stream, byte for byte,
        and stores nothing new [NERVE-4003]."""
        run_id = _run(client)
        first = _submit(client, run_id, llm_step("same", max_tokens=3), SSE)
        counts = table_counts(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db")
        again = _submit(client, run_id, llm_step("same", max_tokens=3), SSE)
        assert (again[0], again[1]["x-step-id"], again[2]) == (200, first[1]["x-step-id"],
                                                               first[2])
        assert table_counts(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db") == counts

    def test_last_event_id_resumes_a_resubmission_after_that_frame(
            self, client: TestClient[Any]) -> None:
        """A resubmission with ``Last-Event-ID: 2`` streams the frames after id 2 only."""
        run_id = _run(client)
        _status, _headers, whole = _submit(client, run_id, llm_step("resume", max_tokens=4),
                                           SSE)
        _status, _headers, rest = _submit(client, run_id, llm_step("resume", max_tokens=4),
                                          {**SSE, "Last-Event-ID": "2"})
        frames = parse_sse(whole)
        assert [f["id"] for f in parse_sse(rest)] == [3, 4, 5]
        assert rest == whole[whole.index(b"id: 3\n"):]
        assert len(frames) == 6

    def test_without_the_media_type_the_answer_is_the_step_as_json(
            self, client: TestClient[Any]) -> None:
        """No ``Accept``, ``*/*`` and ``text/event-stream;q=0`` keep the JSON Step."""
        run_id = _run(client)
        kinds = []
        for i, accept in enumerate([None, "*/*", "text/event-stream;q=0"]):
            headers = {"Accept": accept} if accept else {}
            resp = client.post(f"/v1/runs/{run_id}/steps", json=llm_step(f"j{i}"),
                               headers=headers)
            kinds.append((resp.status_code, resp.headers["content-type"],
                          resp.json()["status"]))
        assert kinds == [(201, "application/json", "queued")] * 3

    def test_a_refusal_is_the_json_envelope_not_a_stream(
            self, client: TestClient[Any]) -> None:
        """An unknown model is 400 ``INVALID_MODEL`` as JSON, before any stream."""
        run_id = _run(client)
        status, headers, raw = _submit(client, run_id,
                                       llm_step("bad", model="mock:nope"), SSE)
        assert (status, headers["content-type"], msgspec.json.decode(raw)["code"]) == (
            400, "application/json", "INVALID_MODEL")

    @pytest.mark.parametrize("value", ["x", "-1", "1" * 21, "9223372036854775808"])
    def test_a_malformed_last_event_id_is_refused_before_admission(
            self, client: TestClient[Any], value: str) -> None:
        """A bad ``Last-Event-ID`` is 400 ``INVALID_PARAMS`` and claims no token: the
        same token then creates its Step (201) [NERVE-4031]."""
        run_id = _run(client)
        status, _headers, raw = _submit(client, run_id, llm_step("lei"),
                                        {**SSE, "Last-Event-ID": value})
        created, _headers, _raw = _submit(client, run_id, llm_step("lei"), SSE)
        assert (status, msgspec.json.decode(raw)["code"], created) == (
            400, "INVALID_PARAMS", 201)

    def test_another_tenants_run_answers_like_an_unknown_one(
            self, mock_cfg: ServerConfig) -> None:
        """A stream submission to another tenant's Run is the 404 of an unknown Run
        [NERVE-4051]."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"tok-a": "alpha",
                                                             "tok-b": "beta"})
        alpha = {"Authorization": "Bearer tok-a"}
        beta = {"Authorization": "Bearer tok-b"}
        with app_client(cfg) as c:
            run_id = _run(c, alpha)
            theirs = _submit(c, run_id, llm_step("t"), {**SSE, **beta})
            unknown = _submit(c, "run_000000000000000000000000", llm_step("t"),
                              {**SSE, **beta})
        assert (theirs[0], msgspec.json.decode(theirs[2])["message"]) == (
            404, f"no run {run_id}")
        assert (unknown[0], msgspec.json.decode(unknown[2])["code"]) == (404, "NOT_FOUND")


class TestAcceptsEventStream:
    """Which ``Accept`` headers ask for the stream [STREAM-2010]."""

    @pytest.mark.parametrize(("value", "wanted"), [
        (b"text/event-stream", True),
        (b"application/json, text/event-stream;q=0.5", True),
        (b"TEXT/Event-Stream ; charset=utf-8", True),
        (b"text/event-stream;q=0", False),
        (b"text/event-stream; q=0.000", False),
        (b"*/*", False),
        (b"text/*", False),
        (b"application/json", False),
        (b"," * 100_000 + b"text/event-stream", False),
    ])
    def test_only_an_explicit_media_range_with_quality_counts(
            self, value: bytes, wanted: bool) -> None:
        """An explicit ``text/event-stream`` range with q > 0 in the first 4 KiB."""
        assert accepts_event_stream([(b"host", b"x"), (b"accept", value)]) is wanted

    def test_no_accept_header_is_json(self) -> None:
        """A request without ``Accept`` keeps the JSON answer."""
        assert accepts_event_stream([(b"content-type", b"application/json")]) is False


_STEP = {"step_id": "stp_1", "run_id": "run_1", "type": "llm_call", "client_token": "c",
         "input": {}, "input_hash": "b3:0", "placement": None, "seed": 1,
         "status": "succeeded", "created_at": "2026-01-01T00:00:00Z",
         "usage": {"tokens_in": 1, "tokens_out": 1, "wall_ms": 0, "cost_usd": 0.0},
         "last_seq": 2}
_BODY = (b'id: 0\nevent: started\ndata: {"type":"llm_call","queue_position":0,'
         b'"predicted_start_ms":0}\n\nid: 1\nevent: token\ndata: {"i":0,"t":"a","id":5}'
         b'\n\nid: 2\nevent: end\ndata: {"output":{"text":"a"}}\n\n')


class TestClientSubmitStream:
    """The Python client submits and reads a Step in one request [STREAM-2010]."""

    @pytest.mark.anyio
    async def test_run_step_makes_one_streaming_post_then_reads_the_step(self) -> None:
        """``run_step`` sends ``POST`` with ``Accept: text/event-stream`` and reads the
        frames from its answer; the only other request reads the finished Step."""
        seen: list[tuple[str, str, str | None]] = []

        def serve(request: httpx.Request) -> httpx.Response:
            seen.append((request.method, request.url.path, request.headers.get("accept")))
            if request.method == "POST":
                return httpx.Response(201, content=_BODY, headers={
                    "content-type": "text/event-stream", "x-step-id": "stp_1"})
            return httpx.Response(200, json=_STEP)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            res = await oc.run_step("run_1", {"type": "llm_call", "client_token": "c",
                                              "input": {}})
        assert seen == [("POST", "/v1/runs/run_1/steps", "text/event-stream"),
                        ("GET", "/v1/steps/stp_1", "*/*")]
        assert ([f.event for f in res.frames], res.text, res.step.step_id) == (
            ["started", "token", "end"], "a", "stp_1")

    @pytest.mark.anyio
    async def test_a_json_answer_falls_back_to_the_get_stream(self) -> None:
        """A server that answers the submission with the Step as JSON is read as before:
        the Step's ``GET`` stream follows, and ``created`` reflects the 201."""
        paths: list[str] = []

        def serve(request: httpx.Request) -> httpx.Response:
            paths.append(f"{request.method} {request.url.path}")
            if request.method == "POST":
                return httpx.Response(201, json={**_STEP, "status": "queued"})
            return httpx.Response(200, content=_BODY,
                                  headers={"content-type": "text/event-stream"})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc, \
                oc.submit_stream("run_1", {"type": "llm_call", "input": {}}) as sub:
            events = [f.event async for f in sub.frames()]
        assert (paths, sub.step_id, sub.created, events) == (
            ["POST /v1/runs/run_1/steps", "GET /v1/steps/stp_1/stream"], "stp_1", True,
            ["started", "token", "end"])


class TestNoThreadHop:
    """The per-request path stays on the event loop."""

    def test_the_bearer_guard_is_a_coroutine_function(self) -> None:
        """Litestar runs a plain-function guard in a worker thread on every request; the
        guard is ``async`` so that it runs inline [NERVE-4050]."""
        assert inspect.iscoroutinefunction(require_token)
