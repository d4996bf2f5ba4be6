"""The llama.cpp worker adapter and the replica's explicit settings and environment
(STREAM-2006, PLACE-5003, PLACE-5004), over httpx.MockTransport: no engine runs."""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import Sequence

import httpx
import msgspec
import pytest

from contracts.errors import EngineError, InvalidParams
from worker_adapters.base import CompletionRequest, Delta, Finish, StreamItem
from worker_adapters.llamacpp import (
    LlamaCppWorkerProcess,
    llamacpp_settings,
    worker_env,
)
from worker_adapters.llamacpp_engine import LlamaCppEngine, generate_body
from worker_adapters.mock import mock_identity

REQ = CompletionRequest(prompt="日本", seed=5, temperature=0.8, top_k=40, top_p=0.95,
                        min_p=0.05, repeat_penalty=1.0, max_tokens=8, stop=("\n",))


class FakeTokenizer:
    """Renders messages as plain lines; counts whitespace words."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(m["content"] + "\n" for m in messages)

    def count(self, text: str) -> int:
        return len(text.split())

    def token_id(self, piece: str) -> int:
        return -1

    def piece(self, token_id: int) -> bytes:
        return b""


def _ndjson(*lines: dict[str, object]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _tok(tid: int, data: bytes) -> dict[str, object]:
    return {"id": tid, "b": base64.b64encode(data).decode()}


async def _collect(engine: LlamaCppEngine) -> list[StreamItem]:
    return [item async for item in engine.stream(REQ)]


def _engine(handler: httpx.MockTransport) -> LlamaCppEngine:
    return LlamaCppEngine("http://worker", mock_identity(), FakeTokenizer(), transport=handler)


class TestLlamaCppEngine:
    """Each NDJSON token line is one Delta with the engine's id and exact bytes."""

    @pytest.mark.anyio
    async def test_tokens_carry_ids_and_bytes_then_finish_with_the_sampled_count(self) -> None:
        """A character split over two tokens arrives as two Deltas with raw bytes."""
        seen: list[dict[str, object]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            return httpx.Response(200, content=_ndjson(
                {"prompt_tokens": 3}, _tok(9, b"\xe6\x97"), _tok(10, b"\xa5"),
                {"finish_reason": "stop", "completion_tokens": 3, "withheld": 1}))

        engine = _engine(httpx.MockTransport(handler))
        assert await _collect(engine) == [
            Delta("", 9, b"\xe6\x97"), Delta("", 10, b"\xa5"), Finish("stop", 3)]
        assert seen == [{"prompt": "日本", "seed": 5, "temperature": 0.8, "top_k": 40,
                         "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0,
                         "max_tokens": 8, "stop": ["\n"]}]
        assert (engine.requests, engine.tokens_generated) == (1, 2)

    @pytest.mark.anyio
    async def test_a_body_without_a_finish_line_yields_no_finish(self) -> None:
        """An interrupted worker stream is not a success (STREAM-2005)."""
        engine = _engine(httpx.MockTransport(lambda r: httpx.Response(
            200, content=_ndjson({"prompt_tokens": 1}, _tok(1, b"a")))))
        assert await _collect(engine) == [Delta("", 1, b"a")]

    @pytest.mark.anyio
    async def test_an_error_line_is_an_engine_error(self) -> None:
        """The worker reports a failure mid-stream as ``{"error": ...}``."""
        engine = _engine(httpx.MockTransport(lambda r: httpx.Response(
            200, content=_ndjson({"prompt_tokens": 1}, {"error": "RuntimeError: boom"}))))
        with pytest.raises(EngineError) as info:
            await _collect(engine)
        assert info.value.message == "the engine failed: RuntimeError: boom"

    @pytest.mark.anyio
    async def test_a_refused_request_is_an_engine_error_with_its_status(self) -> None:
        """A 400 (prompt longer than the context) is ENGINE_ERROR with the detail."""
        engine = _engine(httpx.MockTransport(lambda r: httpx.Response(
            400, content=b'{"error": "prompt of 9 tokens exceeds the context of 8"}')))
        with pytest.raises(EngineError) as info:
            await _collect(engine)
        assert info.value.data == {
            "status": 400, "url": "http://worker",
            "detail": '{"error": "prompt of 9 tokens exceeds the context of 8"}'}

    def test_a_json_schema_is_sent_as_a_gbnf_grammar(self) -> None:
        """Constrained decoding goes to the worker as GBNF text."""
        req = msgspec.structs.replace(REQ, json_schema={"type": "boolean"})
        body = generate_body(req)
        assert body["grammar"] == 'root ::= ("true" | "false") space\nspace ::= " "?'
        assert set(body) - set(generate_body(REQ)) == {"grammar"}


class TestReplicaSettings:
    """Every engine setting is explicit; unknown options are refused (PLACE-5004)."""

    def test_defaults_are_explicit_and_pinned(self) -> None:
        """One thread, batch 512, f16 KV cache, no flash attention, no logits for all."""
        assert llamacpp_settings({}, 2048) == {
            "n_ctx": 2048, "n_threads": 1, "n_threads_batch": 1, "n_batch": 512,
            "n_ubatch": 512, "flash_attn": False, "type_k": "f16", "type_v": "f16",
            "last_n_tokens_size": 64, "logits_all": False}

    def test_an_unknown_option_is_refused_naming_it(self) -> None:
        """A setting the orchestrator cannot pass and observe never reaches a replica."""
        with pytest.raises(InvalidParams) as info:
            llamacpp_settings({"n_threads": 1, "cache_type_k": "q8_0"}, 2048)
        assert info.value.data == {"field": "options.cache_type_k"}

    def test_a_wrong_type_is_refused(self) -> None:
        """flash_attn must be a boolean."""
        with pytest.raises(InvalidParams) as info:
            llamacpp_settings({"flash_attn": "true"}, 2048)
        assert info.value.data == {"field": "options.flash_attn"}

    def test_the_server_environment_never_reaches_a_replica(
            self, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
        """LLAMA_ARG_*, GGML_* and FLASH_ATTN in the server's environment are not passed on;
        the pool's own env is, on top of the fixed base."""
        for name in ("FLASH_ATTN", "LLAMA_ARG_FLASH_ATTN", "GGML_SCHED_MAX_COPIES", "N_UBATCH"):
            monkeypatch.setenv(name, "1")
        settings = llamacpp_settings({"n_threads": 2}, 2048)
        env = worker_env({"GGML_NUMA": "0"}, settings)
        proc = LlamaCppWorkerProcess(pathlib.Path("m.gguf"), settings, env, 2,
                                     tmp_path / "log")
        full = proc.full_env()
        assert sorted(full) == [
            "GGML_NUMA", "LANG", "LC_ALL", "OMP_NUM_THREADS", "PATH", "PYTHONCOERCECLOCALE",
            "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "PYTHONNOUSERSITE", "PYTHONPATH",
            "PYTHONUTF8"]
        assert (full["OMP_NUM_THREADS"], full["LANG"], full["GGML_NUMA"]) == ("2", "C", "0")
        argv = proc.argv(7)
        assert argv[1:6] == ["-m", "worker_adapters.llamacpp_worker", "--model", "m.gguf",
                             "--slots"]
        assert json.loads(argv[argv.index("--settings") + 1]) == settings


class TestSeeds:
    """A seed llama.cpp would replace by a random one is refused (PLACE-5003)."""

    @pytest.mark.parametrize("seed", [0xFFFFFFFF, 2**63 - 1, (7 << 32) | 0xFFFFFFFF])
    def test_low_32_bits_all_ones_is_refused_naming_the_field(self, seed: int) -> None:
        """llama.cpp keeps the low 32 bits, and 0xFFFFFFFF means "random" to it."""
        with pytest.raises(InvalidParams) as info:
            _engine(httpx.MockTransport(lambda r: httpx.Response(500))).check_seed(seed)
        assert info.value.data == {"field": "params.seed", "seed": seed}

    @pytest.mark.parametrize("seed", [0, 1, 0xFFFFFFFE, 2**32, 2**63 - 2])
    def test_every_other_seed_is_taken(self, seed: int) -> None:
        """Including seeds above 2**32, whose low bits llama.cpp uses."""
        _engine(httpx.MockTransport(lambda r: httpx.Response(500))).check_seed(seed)
