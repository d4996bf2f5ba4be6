"""Traces: the request span, the Step span admitted in it, the engine call and the effect
below it, with the GenAI attributes; ``traceparent`` in and out; the configuration
(OBS-8000..OBS-8003, OBS-8010..OBS-8014)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

import msgspec
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig
from orchestratord.telemetry import configure_tracing
from test_harness.support import MOCK_MODEL, app_client, llm_step, loopback_http_server, parse_sse
from test_harness.tracing_support import SpanTree, recorded_spans
from worker_adapters.tools import default_tool_executors

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
WC_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}},
             "required": ["text"], "additionalProperties": False}


def _hex(span: ReadableSpan) -> tuple[str, str]:
    ctx = span.get_span_context()
    assert ctx is not None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _parent(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def _run_to_end(client: Any, run_id: str, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = client.post(f"/v1/runs/{run_id}/steps", json=body, headers=headers or {})
    assert resp.status_code == 201, resp.text
    with client.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
        frames = parse_sse(b"".join(s.iter_bytes()))
    assert frames[-1]["event"] == "end", frames
    return dict(resp.json())


@pytest.fixture
def demo_like(mock_cfg: ServerConfig) -> Iterator[tuple[SpanTree, dict[str, Any]]]:
    """A Flow with the built-in ``wc`` tool, a Run, an ``llm_call`` (submitted with a
    caller's ``traceparent``) and a ``tool_call``, on the mock engine, traced in memory."""
    cfg = msgspec.structs.replace(mock_cfg, tools=default_tool_executors())
    with recorded_spans() as tree, app_client(cfg) as client:
        flow = client.post("/v1/flows", json={"ast_ir": {"demo": 1}, "tools": [
            {"name": "count", "executor": "wc", "parameters": WC_SCHEMA}]}).json()
        run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs",
                             json={"seed": 7}).json()["run_id"]
        llm = _run_to_end(client, run_id, llm_step("l1", max_tokens=4),
                          {"traceparent": TRACEPARENT})
        tool = _run_to_end(client, run_id, {"type": "tool_call", "client_token": "t1",
                                            "input": {"tool": "count",
                                                      "args": {"text": "a b c"}}})
        tree.wait_for(lambda t: len(t.named("step llm_call")) == 1
                      and len(t.named("step tool_call")) == 1)
        yield tree, {"run_id": run_id, "llm": llm, "tool": tool}


class TestSpanTree:
    """One demo-like run: request -> step -> engine call / tool execution."""

    def test_the_llm_step_is_a_child_of_the_request_that_admitted_it(
            self, demo_like: tuple[SpanTree, dict[str, Any]]) -> None:
        """[OBS-8010] [OBS-8002] The submit's server span continues the caller's trace;
        the Step span, though it ran in a background task, is its child; the engine call
        is the Step span's child."""
        tree, _ = demo_like
        (request,) = tree.named("POST /v1/runs/{run_id}/steps")[:1]
        (step,) = tree.named("step llm_call")
        (engine,) = tree.named(f"text_completion {MOCK_MODEL}")
        assert _hex(request)[0] == TRACE_ID
        assert _parent(request) == CALLER_SPAN
        assert (_hex(step)[0], _parent(step)) == (TRACE_ID, _hex(request)[1])
        assert (_hex(engine)[0], _parent(engine)) == (TRACE_ID, _hex(step)[1])
        assert (request.kind, step.kind, engine.kind) == (
            SpanKind.SERVER, SpanKind.INTERNAL, SpanKind.CLIENT)
        assert request.attributes is not None
        assert request.attributes["http.route"] == "/v1/runs/{run_id}/steps"

    def test_the_engine_call_carries_the_genai_attributes(
            self, demo_like: tuple[SpanTree, dict[str, Any]]) -> None:
        """[OBS-8012] Operation, provider, model, sampling, tokens in and out, finish."""
        tree, _ = demo_like
        (engine,) = tree.named(f"text_completion {MOCK_MODEL}")
        attrs = dict(engine.attributes or {})
        replica = attrs.pop("orchestrator.replica.id")
        assert str(replica).startswith("mock-0/r")
        assert attrs == {
            "gen_ai.operation.name": "text_completion", "gen_ai.provider.name": "mock",
            "gen_ai.request.model": MOCK_MODEL, "gen_ai.request.max_tokens": 4,
            "gen_ai.request.temperature": 0.0, "gen_ai.request.top_p": 0.95,
            "gen_ai.request.top_k": 40, "gen_ai.request.seed": attrs["gen_ai.request.seed"],
            "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 4,
            "gen_ai.response.finish_reasons": ("length",)}
        assert engine.status.status_code is StatusCode.UNSET

    def test_the_step_span_names_run_step_type_mode_and_provenance(
            self, demo_like: tuple[SpanTree, dict[str, Any]]) -> None:
        """[OBS-8011] Run, step, type, mode, terminal status and the provenance block."""
        tree, ids = demo_like
        (step,) = tree.named("step llm_call")
        attrs = dict(step.attributes or {})
        assert {k: attrs[k] for k in (
            "orchestrator.run.id", "orchestrator.step.id", "orchestrator.step.type",
            "orchestrator.run.mode", "orchestrator.step.status",
            "orchestrator.provenance.engine", "orchestrator.provenance.pool_id",
            "orchestrator.provenance.tokens_in", "orchestrator.provenance.tokens_out",
            "orchestrator.provenance.finish_reason")} == {
            "orchestrator.run.id": ids["run_id"],
            "orchestrator.step.id": ids["llm"]["step_id"],
            "orchestrator.step.type": "llm_call", "orchestrator.run.mode": "record",
            "orchestrator.step.status": "succeeded",
            "orchestrator.provenance.engine": "mock",
            "orchestrator.provenance.pool_id": "mock-0",
            "orchestrator.provenance.tokens_in": 3, "orchestrator.provenance.tokens_out": 4,
            "orchestrator.provenance.finish_reason": "length"}
        for key in ("seed", "prompt_hash", "params_hash", "engine_build", "model_hash",
                    "replica_id", "policy_hash", "price_table_version", "cost_usd"):
            assert "orchestrator.provenance." + key in attrs, key

    def test_a_tool_call_is_an_execute_tool_span_under_its_step(
            self, demo_like: tuple[SpanTree, dict[str, Any]]) -> None:
        """[OBS-8013] The tool execution is GenAI ``execute_tool`` with the tool's
        executor, a child of the Step span, itself a child of its submit request."""
        tree, ids = demo_like
        (step,) = tree.named("step tool_call")
        (tool,) = tree.named("execute_tool wc")
        requests = tree.named("POST /v1/runs/{run_id}/steps")
        assert _parent(step) in {_hex(r)[1] for r in requests}
        assert _parent(tool) == _hex(step)[1]
        assert dict(tool.attributes or {}) == {"gen_ai.operation.name": "execute_tool",
                                               "gen_ai.tool.name": "wc"}
        assert (step.attributes or {})["orchestrator.step.id"] == ids["tool"]["step_id"]


class TestFailedSteps:
    """A Step that fails ends its span with an error status."""

    def test_a_refused_tool_output_marks_the_step_span_as_an_error(
            self, mock_cfg: ServerConfig) -> None:
        """[OBS-8011] ``error.type`` is the error code; the status is ERROR."""
        import sys

        from worker_adapters.base import ToolExecutorConfig

        cfg = msgspec.structs.replace(mock_cfg, tools={"fails": ToolExecutorConfig(
            kind="argv", argv=[sys.executable, "-c", "import sys; sys.exit(3)"])})
        with recorded_spans() as tree, app_client(cfg) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {}, "tools": [
                {"name": "bad", "executor": "fails",
                 "parameters": {"type": "object"}}]}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()[
                "run_id"]
            resp = client.post(f"/v1/runs/{run_id}/steps", json={
                "type": "tool_call", "client_token": "b1",
                "input": {"tool": "bad", "args": {}}})
            assert resp.status_code == 201
            tree.wait_for(lambda t: len(t.named("step tool_call")) == 1)
        (step,) = tree.named("step tool_call")
        (tool,) = tree.named("execute_tool fails")
        assert (step.status.status_code, (step.attributes or {})["error.type"],
                (step.attributes or {})["orchestrator.step.status"]) == (
            StatusCode.ERROR, "ENGINE_ERROR", "failed")
        assert ((tool.attributes or {})["error.type"], tool.status.status_code) == (
            "ENGINE_ERROR", StatusCode.ERROR)


class _FakeLlamaServer(BaseHTTPRequestHandler):
    """llama.cpp's ``llama-server`` as its README documents it, enough for one pool:
    ``/v1/models``, ``/props``, ``/tokenize`` and a streamed ``/v1/completions``. Every
    request's ``traceparent`` is kept."""

    seen: ClassVar[list[tuple[str, str | None]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """``/v1/models`` and ``/props``."""
        self.seen.append((f"GET {self.path}", self.headers.get("traceparent")))
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": "fake.gguf"}]})
        else:
            self._json({"default_generation_settings": {"n_ctx": 4096, "params": {}},
                        "total_slots": 1, "model_path": "/models/fake.gguf",
                        "chat_template": "", "build_info": "b1-fake"})

    def do_POST(self) -> None:
        """``/tokenize`` (three tokens) and ``/v1/completions`` (one token, ``stop``)."""
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.seen.append((f"POST {self.path}", self.headers.get("traceparent")))
        if self.path == "/tokenize":
            self._json({"tokens": [1, 2, 3]})
            return
        chunks = [{"choices": [{"text": " hi", "index": 0, "finish_reason": None,
                                "logprobs": {"content": [{"id": 7, "token": " hi",
                                                          "bytes": [32, 104, 105],
                                                          "logprob": 0.0,
                                                          "top_logprobs": []}]}}]},
                  {"choices": [{"text": "", "index": 0, "finish_reason": "stop",
                                "logprobs": None}]}]
        body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
        body += b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_engine() -> Iterator[str]:
    """A fake llama-server on a free loopback port."""
    _FakeLlamaServer.seen = []
    with loopback_http_server(_FakeLlamaServer) as url:
        yield url


class TestTraceparentToTheEngine:
    """The engine's HTTP request carries the trace (opentelemetry-instrumentation-httpx)."""

    def test_the_completion_request_carries_the_engine_call_as_parent(
            self, mock_cfg: ServerConfig, fake_engine: str) -> None:
        """[OBS-8014] A remote ``openai_http`` pool: the ``/v1/completions`` request's
        ``traceparent`` names the caller's trace and the client span under the engine
        call span."""
        pool = PoolConfig(pool_id="remote-0", engine="openai_http", urls=[fake_engine],
                          models=[ModelConfig(id="remote:fake", context_tokens=4096)],
                          options={"dialect": "llama-server"})
        cfg = msgspec.structs.replace(mock_cfg, pools=[pool])
        with recorded_spans(http_clients=True) as tree, app_client(cfg) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs",
                                 json={"seed": 1}).json()["run_id"]
            _run_to_end(client, run_id, llm_step("r1", model="remote:fake", max_tokens=2),
                        {"traceparent": TRACEPARENT})
            tree.wait_for(lambda t: len(t.named("step llm_call")) == 1)
        (engine,) = tree.named("text_completion remote:fake")
        clients = [s for s in tree.named("POST") if _parent(s) == _hex(engine)[1]]
        assert len(clients) == 1
        sent = [tp for what, tp in _FakeLlamaServer.seen if what == "POST /v1/completions"]
        assert sent == [f"00-{TRACE_ID}-{_hex(clients[0])[1]}-01"]
        assert (engine.attributes or {})["gen_ai.provider.name"] == "openai_http:llama-server"


class TestConfiguration:
    """Only the standard variables turn tracing on (the exporting paths run in
    ``test_harness/integration/test_trace_export.py``: a provider is set once per
    process)."""

    @pytest.mark.parametrize("env", [{}, {"OTEL_TRACES_EXPORTER": "none"},
                                     {"OTEL_TRACES_EXPORTER": " "},
                                     {"OTEL_TRACES_EXPORTER": "console",
                                      "OTEL_SDK_DISABLED": "true"}])
    def test_nothing_is_installed_without_an_exporter(self, env: dict[str, str]) -> None:
        """[OBS-8001] Unset, empty, ``none`` or a disabled SDK: no provider."""
        assert configure_tracing(env) is None

    @pytest.mark.parametrize(("env", "line"), [
        ({"OTEL_TRACES_EXPORTER": "zipkin"},
         "orchestratord: OTEL_TRACES_EXPORTER=zipkin: unknown exporter 'zipkin'; use one "
         "of otlp, console, none"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
         "orchestratord: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: this server exports OTLP over "
         "http/protobuf only; unset it or set it to http/protobuf")])
    def test_an_exporter_it_cannot_serve_refuses_to_start(self, env: dict[str, str],
                                                          line: str) -> None:
        """[OBS-8000] One line naming the variable and the fix."""
        with pytest.raises(SystemExit) as info:
            configure_tracing(env)
        assert str(info.value) == line


class TestHostileTraceparent:
    """A malformed ``traceparent`` is ignored, never an error."""

    @pytest.mark.parametrize("value", ["00-zz-yy-01", "garbage", "00-" + "0" * 32 + "-"
                                       + "0" * 16 + "-01", "x" * 4000])
    def test_the_request_starts_a_new_trace(self, mock_cfg: ServerConfig,
                                            value: str) -> None:
        """[OBS-8002] The answer is the usual one; the server span has no parent."""
        with recorded_spans() as tree, app_client(mock_cfg) as client:
            resp = client.get("/v1/capabilities", headers={"traceparent": value})
            tree.wait_for(lambda t: len(t.named("GET /v1/capabilities")) == 1)
        (span,) = tree.named("GET /v1/capabilities")
        assert (resp.status_code, span.parent) == (200, None)


class TestNoCredentialInSpans:
    """Headers are not recorded and a stream ticket is redacted."""

    def test_a_ticket_and_a_bearer_token_never_reach_the_request_span(
            self, mock_cfg: ServerConfig) -> None:
        """[OBS-8003] ``ticket=`` is ``[REDACTED]`` in ``http.url``; the token is nowhere."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"tok-span-secret": "acme"})
        with recorded_spans() as tree, app_client(cfg) as client:
            resp = client.get("/v1/steps/stp_x/stream?ticket=tkt-span-secret&x=1",
                              headers={"Authorization": "Bearer tok-span-secret"})
            tree.wait_for(lambda t: len(t.named("GET /v1/steps/{step_id}/stream")) == 1)
        (span,) = tree.named("GET /v1/steps/{step_id}/stream")
        attrs = dict(span.attributes or {})
        assert (resp.status_code, attrs["http.url"]) == (
            404, "http://127.0.0.1/v1/steps/stp_x/stream?ticket=[REDACTED]&x=1")
        assert "secret" not in json.dumps(attrs)


class TestFsOpSpans:
    """A file-system operation is an effect span under its Step."""

    def test_a_write_is_an_fs_op_span_under_its_step(self, mock_cfg: ServerConfig) -> None:
        """[OBS-8013] ``fs_op fs`` with its executor, a child of ``step fs_op``."""
        import pathlib

        root = (pathlib.Path(mock_cfg.data_dir) / "sandboxes" / "default" / "r1").resolve()
        (root / "out").mkdir(parents=True)
        with recorded_spans() as tree, app_client(mock_cfg) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {"fs": 1}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={
                "fs_policy": {"roots": [str(root)], "allow": {"write": ["out/*.txt"]}}}
                                 ).json()["run_id"]
            _run_to_end(client, run_id, {"type": "fs_op", "client_token": "w1", "input": {
                "op": "write", "path": "out/a.txt", "content": "hi"}})
            tree.wait_for(lambda t: len(t.named("step fs_op")) == 1)
        (step,) = tree.named("step fs_op")
        (effect,) = tree.named("fs_op fs")
        assert (_parent(effect), dict(effect.attributes or {})) == (
            _hex(step)[1], {"orchestrator.effect.executor": "fs"})
        assert (root / "out" / "a.txt").read_text() == "hi"
