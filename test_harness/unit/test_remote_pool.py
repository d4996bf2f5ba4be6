"""A remote openai_http pool with no model file here, over httpx.MockTransport (PLACE-5007).

Each fake server answers exactly as its dialect's documented wire format does (llama.cpp
``tools/server`` README, vLLM's ``serving_tokenization``, llama-cpp-python's
``llama_cpp/server/app.py``); every request it receives is logged, so the tests assert
the requests the adapter sends as well as what it makes of the answers.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from contracts.errors import EngineError, InvalidParams, PoolUnavailable
from orchestrator_core.config import ModelConfig, PoolConfig
from worker_adapters.base import CompletionRequest, Delta, Finish, ReplicaSpec, StreamItem
from worker_adapters.mock import mock_identity
from worker_adapters.openai_http import OpenAIHttpEngine
from worker_adapters.registry import OpenAIHttpDriver

pytestmark = pytest.mark.anyio

REQ = CompletionRequest(prompt="hi", seed=5, temperature=0.0, top_k=40, top_p=0.95,
                        min_p=0.05, repeat_penalty=1.0, max_tokens=8)
MESSAGES = [{"role": "user", "content": "Say hi"}]
Log = list[tuple[str, Any]]


def _sse(*chunks: dict[str, Any]) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
    return body + b"data: [DONE]\r\n\r\n"


def _chunk(text: str, finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
    return {"choices": [{"text": text, "index": 0, "finish_reason": finish,
                         "logprobs": logprobs}]}


def _server(log: Log, routes: dict[str, Callable[[Any], Any]]) -> httpx.MockTransport:
    """A fake engine server: ``routes`` maps ``"METHOD /path"`` to the JSON it answers
    (or an ``httpx.Response``); each request is appended to ``log``."""

    def handle(request: httpx.Request) -> httpx.Response:
        key = f"{request.method} {request.url.path}"
        body = json.loads(request.content) if request.content else None
        log.append((key, body))
        if key not in routes:
            return httpx.Response(404, json={"error": "no route"})
        answer = routes[key](body)
        return answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)

    return httpx.MockTransport(handle)


def _engine(dialect: Any, transport: httpx.MockTransport,
            served_model: str | None = None) -> OpenAIHttpEngine:
    return OpenAIHttpEngine("http://engine", mock_identity(), None, transport=transport,
                            dialect=dialect, served_model=served_model)


async def _collect(engine: OpenAIHttpEngine) -> list[StreamItem]:
    return [item async for item in engine.stream(REQ)]


CHATML = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"


class TestWithoutModelFile:
    """Admission on such a pool must await aprepare: prepare cannot ask the server."""

    def test_prepare_is_refused_with_a_typed_engine_error(self) -> None:
        """The synchronous prepare names the server and says to use aprepare."""
        engine = _engine("llama-server", _server([], {}))
        with pytest.raises(EngineError) as info:
            engine.prepare(prompt="hi", messages=None)
        assert (info.value.message, info.value.data) == (
            "this pool renders and counts prompts through its engine server: admission "
            "must await aprepare, not call prepare",
            {"url": "http://engine", "dialect": "llama-server"})

    def test_a_dialect_without_a_tokenize_endpoint_cannot_serve_without_the_file(self) -> None:
        """A plain OpenAI server gives no tokenizer: the adapter is refused, naming the
        dialect option."""
        with pytest.raises(InvalidParams) as info:
            _engine("openai", _server([], {}))
        assert info.value.data == {"field": "options.dialect", "dialect": "openai"}


class TestLlamaServer:
    """llama-server: /apply-template, /tokenize and the n_probs of each chunk."""

    async def test_messages_are_rendered_by_apply_template_and_counted_by_tokenize(
            self) -> None:
        """Two requests: the template (generation prompt on), then the prompt's tokens
        as a completion evaluates them (BOS added, special tokens parsed)."""
        log: Log = []
        engine = _engine("llama-server", _server(log, {
            "POST /apply-template": lambda b: {"prompt": CHATML},
            "POST /tokenize": lambda b: {"tokens": [1, 2, 3, 4, 5, 6, 7]}}))
        prepared = await engine.aprepare(prompt=None, messages=MESSAGES)
        assert (prepared.text, prepared.tokens_in) == (CHATML, 7)
        assert log == [
            ("POST /apply-template", {"messages": MESSAGES, "add_generation_prompt": True}),
            ("POST /tokenize", {"content": CHATML, "add_special": True,
                                "parse_special": True})]

    async def test_each_chunk_gives_the_sampled_id_and_exact_bytes(self) -> None:
        """With n_probs 1 each chunk names its token; no tokenize request is needed."""
        log: Log = []
        engine = _engine("llama-server", _server(log, {
            "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(
                _chunk(" Paris", logprobs={"content": [
                    {"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115],
                     "logprob": -0.1, "top_logprobs": []}]}),
                _chunk("", "length")))}))
        assert await _collect(engine) == [Delta("", 7042, b" Paris"), Finish("length")]
        body = log[0][1]
        assert [log[0][0], body["cache_prompt"], body["mirostat"], body["repeat_last_n"],
                body["n_probs"]] == ["POST /v1/completions", False, 0, 64, 1]
        assert len(log) == 1

    async def test_a_token_the_server_held_back_is_recovered_with_its_bytes(self) -> None:
        """The server sends no chunk for a token ending inside a character; the next
        chunk's text is then tokenized with pieces, which give both ids and bytes."""
        log: Log = []
        engine = _engine("llama-server", _server(log, {
            "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(
                _chunk("é", "stop", logprobs={"content": [
                    {"id": 249, "token": "", "bytes": [169], "logprob": -0.2}]}))),
            "POST /tokenize": lambda b: {"tokens": [{"id": 132, "piece": [195]},
                                                    {"id": 249, "piece": [169]}]}}))
        assert await _collect(engine) == [Delta("", 132, b"\xc3"), Delta("", 249, b"\xa9"),
                                          Finish("stop")]
        assert log[1] == ("POST /tokenize", {"content": "é", "add_special": False,
                                             "parse_special": False, "with_pieces": True})

    async def test_held_bytes_the_tokenizer_does_not_explain_are_one_unknown_token(
            self) -> None:
        """When the server's tokenization does not end with the sampled token, the held
        bytes become one token of id -1 and the sampled token keeps its own."""
        engine = _engine("llama-server", _server([], {
            "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(
                _chunk("é", "stop", logprobs={"content": [
                    {"id": 249, "token": "", "bytes": [169], "logprob": -0.2}]}))),
            "POST /tokenize": lambda b: {"tokens": [{"id": 1800, "piece": "é"}]}}))
        assert await _collect(engine) == [Delta("", -1, b"\xc3"), Delta("", 249, b"\xa9"),
                                          Finish("stop")]

    async def test_props_are_the_identity_report(self) -> None:
        """build_info, model_path, the slot context, the default settings and the chat
        template's hash."""
        engine = _engine("llama-server", _server([], {"GET /props": lambda b: PROPS}))
        assert engine.remote is not None
        assert await engine.remote.report() == LLAMA_SERVER_REPORT


PROPS: dict[str, Any] = {
    "default_generation_settings": {"n_ctx": 4096, "params": {"top_k": 40, "seed": -1}},
    "total_slots": 1, "model_path": "/models/smollm2.gguf", "chat_template": "{{x}}",
    "build_info": "b6000-abcdef0"}
LLAMA_SERVER_REPORT: dict[str, Any] = {
    "dialect": "llama-server", "version": "b6000-abcdef0", "model": "/models/smollm2.gguf",
    "context_tokens": 4096,
    "settings": {"total_slots": 1,
                 # fingerprint("{{x}}"): the template itself is not copied into the report
                 "chat_template": "b3:82c2a78e660b4758325e949f322c4e2015428f3e83244e9274bf97"
                                  "03eee91fcc",
                 "default_generation_settings": {"top_k": 40, "seed": -1}}}


class TestVllm:
    """vLLM: /tokenize with messages, /detokenize, and ids in the stream."""

    async def test_messages_are_rendered_through_tokenize_and_detokenize(self) -> None:
        """The chat template's ids are detokenized to the text sent, then that text is
        counted as the completion endpoint tokenizes it; the served model is named."""
        log: Log = []

        def tokenize(body: dict[str, Any]) -> dict[str, Any]:
            tokens = [1, 2, 3] if "messages" in body else [1, 2, 3, 4]
            return {"count": len(tokens), "max_model_len": 8192, "tokens": tokens}

        engine = _engine("vllm", _server(log, {
            "POST /tokenize": tokenize,
            "POST /detokenize": lambda b: {"prompt": CHATML}}), served_model="smol")
        prepared = await engine.aprepare(prompt=None, messages=MESSAGES)
        assert (prepared.text, prepared.tokens_in) == (CHATML, 4)
        assert log == [
            ("POST /tokenize", {"model": "smol", "messages": MESSAGES,
                                "add_generation_prompt": True, "add_special_tokens": False}),
            ("POST /detokenize", {"model": "smol", "tokens": [1, 2, 3]}),
            ("POST /tokenize", {"model": "smol", "prompt": CHATML,
                                "add_special_tokens": True})]

    async def test_stream_ids_carry_the_bytes_of_the_text_they_complete(self) -> None:
        """Without the vocabulary, a token whose character vLLM holds back has no bytes
        and the token completing it has the whole character."""
        chunks = [_chunk(" caf", logprobs={"tokens": ["token_id:2104"]}),
                  _chunk("", logprobs={"tokens": ["token_id:132"]}),
                  _chunk("é", "length", logprobs={"tokens": ["token_id:249"]})]
        engine = _engine("vllm", _server([], {
            "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(*chunks))}))
        assert await _collect(engine) == [
            Delta("", 2104, b" caf"), Delta("", 132, b""), Delta("", 249, b"\xc3\xa9"),
            Finish("length")]

    async def test_version_and_models_are_the_identity_report(self) -> None:
        """/version and the first served model: its root, context and name."""
        engine = _engine("vllm", _server([], {
            "GET /version": lambda b: {"version": "0.11.0"},
            "GET /v1/models": lambda b: {"object": "list", "data": [
                {"id": "smol", "root": "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "max_model_len": 8192}]}}))
        assert engine.remote is not None
        assert await engine.remote.report() == {
            "dialect": "vllm", "version": "0.11.0",
            "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "context_tokens": 8192,
            "settings": {"served_model": "smol"}}


def _lcp_server(log: Log, chunks: list[dict[str, Any]]) -> httpx.MockTransport:
    ids = {"": [1], " Paris": [1, 7042], "こ": [1, 7365, 237]}
    return _server(log, {
        "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(*chunks)),
        "POST /extras/tokenize": lambda b: {"tokens": ids[b["input"]]},
        "POST /extras/tokenize/count": lambda b: {"count": 9},
        "GET /openapi.json": lambda b: {"info": {"title": "llama.cpp Python API",
                                                 "version": "0.3.36"}},
        "GET /v1/models": lambda b: {"object": "list", "data": [
            {"id": "/models/smol.gguf", "object": "model"}]}})


class TestLlamaCppPython:
    """llama-cpp-python's server: counts and tokenizes, but renders no chat template."""

    async def test_chat_messages_are_refused_at_admission(self) -> None:
        """It has no template endpoint: INVALID_PARAMS naming input.messages, and no
        request is sent."""
        log: Log = []
        engine = _engine("llama-cpp-python", _lcp_server(log, []))
        with pytest.raises(InvalidParams) as info:
            await engine.aprepare(prompt=None, messages=MESSAGES)
        assert info.value.data == {"field": "input.messages", "dialect": "llama-cpp-python"}
        assert log == []

    async def test_a_prompt_is_counted_by_the_server(self) -> None:
        """/extras/tokenize/count tokenizes as the completion does."""
        log: Log = []
        engine = _engine("llama-cpp-python", _lcp_server(log, []))
        prepared = await engine.aprepare(prompt="The sea", messages=None)
        assert (prepared.text, prepared.tokens_in) == ("The sea", 9)
        assert log == [("POST /extras/tokenize/count", {"input": "The sea"})]

    async def test_ids_are_resolved_after_the_stream_and_cached(self) -> None:
        """The server serves one request at a time, so every tokenize request follows the
        completion; its BOS is dropped, a repeated text is tokenized once, and a character
        split over two tokens puts its bytes on the second."""
        log: Log = []
        engine = _engine("llama-cpp-python", _lcp_server(log, [
            _chunk(" Paris"), _chunk("こ"), _chunk(" Paris"), _chunk("", "stop")]))
        assert await _collect(engine) == [
            Delta("", 7042, b" Paris"), Delta("", 7365, b""),
            Delta("", 237, "こ".encode()), Delta("", 7042, b" Paris"), Finish("stop")]
        assert [key for key, _ in log] == ["POST /v1/completions"] + \
            ["POST /extras/tokenize"] * 3
        assert [body["input"] for _, body in log[1:]] == ["", " Paris", "こ"]
        assert (engine.requests, engine.tokens_generated) == (1, 4)

    async def test_an_interrupted_stream_still_yields_its_tokens_but_no_finish(self) -> None:
        """A stream that ends without finish_reason gives its tokens and no Finish."""
        engine = _engine("llama-cpp-python", _lcp_server([], [_chunk(" Paris")]))
        assert await _collect(engine) == [Delta("", 7042, b" Paris")]

    async def test_a_failed_tokenize_request_is_an_engine_error(self) -> None:
        """A server error while resolving ids raises ENGINE_ERROR naming the endpoint."""
        engine = _engine("llama-cpp-python", _server([], {
            "POST /v1/completions": lambda b: httpx.Response(200, content=_sse(
                _chunk("x", "stop"))),
            "POST /extras/tokenize": lambda b: httpx.Response(500, text="boom")}))
        with pytest.raises(EngineError) as info:
            await _collect(engine)
        assert info.value.data == {"url": "http://engine", "endpoint": "/extras/tokenize",
                                   "status": 500, "detail": "boom"}


def _pool(dialect: str = "llama-cpp-python", *, urls: tuple[str, ...] = ("http://a",),
          **options: Any) -> PoolConfig:
    return PoolConfig(pool_id="remote-0", engine="openai_http", urls=list(urls),
                      replicas=len(urls), models=[ModelConfig(id="m", context_tokens=2048)],
                      options={"dialect": dialect, **options})


def _replica(index: int = 0) -> ReplicaSpec:
    return ReplicaSpec(replica_id=f"remote-0/r{index}", index=index, slots=1,
                       data_dir=pathlib.Path("/nonexistent"))


LCP_REPORT: dict[str, Any] = {
    "dialect": "llama-cpp-python", "version": "llama-cpp-python 0.3.36",
    "model": "/models/smol.gguf", "context_tokens": None, "settings": {}}


class TestRemoteIdentity:
    """The identity of a pool with no model file: config plus the server's report."""

    async def test_the_server_reports_version_and_model(self) -> None:
        """Name by dialect, the reported version, a model hash of the served model, and
        the report folded into the build fingerprint."""
        driver = OpenAIHttpDriver(transport=_lcp_server([], []))
        ident = await driver.identity(_pool())
        assert (ident.name, ident.version, ident.model_hash) == (
            "openai_http:llama-cpp-python", "llama-cpp-python 0.3.36",
            # fingerprint({"dialect": "llama-cpp-python", "model": "/models/smol.gguf"})
            "b3:e4a7dca58d27c3d717c722adfa4a3448b2dbf2f86dcf712b6b75cd1590d3e752")
        assert ident.settings == {"dialect": "llama-cpp-python", "env": {},
                                  "engine_report": LCP_REPORT}

    async def test_a_declared_sha256_is_the_model_hash(self) -> None:
        """The operator's declaration wins over the served model's name."""
        pc = PoolConfig(pool_id="remote-0", engine="openai_http", urls=["http://a"],
                        models=[ModelConfig(id="m", sha256="ab" * 32)],
                        options={"dialect": "llama-cpp-python"})
        ident = await OpenAIHttpDriver(transport=_lcp_server([], [])).identity(pc)
        assert ident.model_hash == "sha256:" + "ab" * 32

    async def test_a_declared_engine_version_the_server_contradicts_is_refused(self) -> None:
        """INVALID_PARAMS naming options.engine_version, with both values."""
        driver = OpenAIHttpDriver(transport=_lcp_server([], []))
        with pytest.raises(InvalidParams) as info:
            await driver.identity(_pool(engine_version="llama-cpp-python 0.3.2"))
        assert info.value.data == {"field": "options.engine_version", "pool_id": "remote-0",
                                   "declared": "llama-cpp-python 0.3.2",
                                   "reported": "llama-cpp-python 0.3.36"}

    async def test_a_context_larger_than_the_servers_is_refused(self) -> None:
        """Steps the server could not hold would be admitted: models[0].context_tokens
        is named."""
        driver = OpenAIHttpDriver(transport=_server([], {
            "GET /props": lambda b: {**PROPS, "default_generation_settings": {
                "n_ctx": 1024, "params": {}}}}))
        with pytest.raises(InvalidParams) as info:
            await driver.identity(_pool("llama-server"))
        assert info.value.data == {"field": "models[0].context_tokens", "pool_id": "remote-0",
                                   "declared": 2048, "reported": 1024}

    async def test_a_pool_without_file_or_tokenizing_dialect_is_refused(self) -> None:
        """A plain openai dialect with no model path cannot count prompts."""
        with pytest.raises(InvalidParams) as info:
            await OpenAIHttpDriver(transport=_lcp_server([], [])).identity(_pool("openai"))
        assert info.value.data == {"field": "options.dialect", "pool_id": "remote-0"}

    async def test_an_unknown_dialect_is_refused(self) -> None:
        """The dialect option takes only the known servers."""
        with pytest.raises(InvalidParams) as info:
            await OpenAIHttpDriver().identity(_pool("tgi"))
        assert info.value.data == {"field": "options.dialect", "pool_id": "remote-0"}

    async def test_fewer_urls_than_replicas_is_refused(self) -> None:
        """Each replica needs its URL."""
        pc = PoolConfig(pool_id="remote-0", engine="openai_http", urls=["http://a"],
                        replicas=2, models=[ModelConfig(id="m")],
                        options={"dialect": "vllm"})
        with pytest.raises(PoolUnavailable):
            await OpenAIHttpDriver().identity(pc)

    async def test_a_replica_reporting_another_engine_is_refused(self) -> None:
        """The second URL serves another version: its replica is refused naming it."""

        def handle(request: httpx.Request) -> httpx.Response:
            version = "0.3.36" if request.url.host == "a" else "0.3.2"
            routes = {"/openapi.json": {"info": {"version": version}},
                      "/v1/models": {"data": [{"id": "/models/smol.gguf"}]}}
            return httpx.Response(200, json=routes[request.url.path])

        driver = OpenAIHttpDriver(transport=httpx.MockTransport(handle))
        pc = _pool(urls=("http://a", "http://b"))
        ident = await driver.identity(pc)
        first = await driver.start(pc, ident, _replica(0))
        assert isinstance(first.adapter, OpenAIHttpEngine) and first.adapter.tokenizer is None
        await first.adapter.aclose()
        with pytest.raises(EngineError) as info:
            await driver.start(pc, ident, _replica(1))
        assert info.value.data == {"field": "engine_report.version",
                                   "expected": "llama-cpp-python 0.3.36",
                                   "observed": "llama-cpp-python 0.3.2"}

    async def test_without_an_answering_server_no_replica_starts(self) -> None:
        """The identity then has no report, and a server that answers later is refused."""
        down = httpx.MockTransport(lambda r: httpx.Response(503, json={}))
        pc = _pool()
        ident = await OpenAIHttpDriver(transport=down).identity(pc)
        assert "engine_report" not in ident.settings
        with pytest.raises(EngineError) as info:
            await OpenAIHttpDriver(transport=_lcp_server([], [])).start(pc, ident, _replica())
        assert info.value.data is not None and info.value.data["field"] == "engine_report"
