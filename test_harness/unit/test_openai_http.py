"""The OpenAI-compatible streaming adapter over httpx.MockTransport (STREAM-2005, PLACE-5003,
PLACE-5005)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import ClassVar

import anyio
import httpx
import pytest

from contracts.errors import EngineError
from orchestrator_core.config import ModelConfig, PoolConfig
from orchestrator_core.pools import Pool
from worker_adapters.base import CompletionRequest, Delta, Finish, StreamItem
from worker_adapters.mock import mock_identity
from worker_adapters.openai_http import OpenAIHttpEngine
from worker_adapters.registry import remote_identity

REQ = CompletionRequest(prompt="hi", seed=5, temperature=0.8, top_k=40, top_p=0.95,
                        min_p=0.05, repeat_penalty=1.0, max_tokens=8)


class FakeTokenizer:
    """Ids are the length of the piece; renders messages as plain lines."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return "".join(m["content"] + "\n" for m in messages)

    def count(self, text: str) -> int:
        return len(text.split())

    def token_id(self, piece: str) -> int:
        return len(piece)

    def piece(self, token_id: int) -> bytes:
        return b"<%d>" % token_id


def _sse(*chunks: dict[str, object], done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)
    return body + (b"data: [DONE]\r\n\r\n" if done else b"")


def _chunk(text: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"text": text, "index": 0, "finish_reason": finish}]}


async def _collect(engine: OpenAIHttpEngine) -> list[StreamItem]:
    return [item async for item in engine.stream(REQ)]


def _engine(handler: httpx.MockTransport) -> OpenAIHttpEngine:
    return OpenAIHttpEngine("http://engine", mock_identity(), FakeTokenizer(),
                            transport=handler)


class TestOpenAIHttpEngine:
    """Chunks become Deltas, the finish_reason a Finish; nothing is invented."""

    @pytest.mark.anyio
    async def test_tokens_then_finish(self) -> None:
        """Each chunk is one token; the empty final chunk carries the finish_reason."""
        seen: list[dict[str, object]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            return httpx.Response(200, content=_sse(_chunk("Hel"), _chunk("lo"),
                                                    _chunk("", "stop")))

        engine = _engine(httpx.MockTransport(handler))
        assert await _collect(engine) == [Delta("Hel", 3), Delta("lo", 2), Finish("stop")]
        assert seen[0] == {
            "prompt": "hi", "stream": True, "seed": 5, "temperature": 0.8, "top_k": 40,
            "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.0,
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "mirostat_mode": 0,
            "max_tokens": 8, "stop": []}
        assert (engine.requests, engine.tokens_generated) == (1, 2)

    @pytest.mark.anyio
    async def test_a_stream_without_finish_reason_yields_no_finish(self) -> None:
        """``[DONE]`` without a finish_reason is an interrupted stream."""
        engine = _engine(httpx.MockTransport(
            lambda r: httpx.Response(200, content=_sse(_chunk("a")))))
        assert await _collect(engine) == [Delta("a", 1)]

    @pytest.mark.anyio
    async def test_an_http_error_status_is_an_engine_error(self) -> None:
        """Non-200 answers raise ENGINE_ERROR with the status."""
        engine = _engine(httpx.MockTransport(lambda r: httpx.Response(500, text="oops")))
        with pytest.raises(EngineError) as info:
            await _collect(engine)
        assert info.value.data is not None and info.value.data["status"] == 500

    @pytest.mark.anyio
    async def test_a_broken_connection_is_an_engine_error(self) -> None:
        """Transport failures raise ENGINE_ERROR."""
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused")

        with pytest.raises(EngineError):
            await _collect(_engine(httpx.MockTransport(handler)))


# Recorded from vLLM's /v1/completions with return_tokens_as_token_ids.
VLLM_CHUNKS: list[dict[str, object]] = [
    {"choices": [{"index": 0, "text": " caf", "finish_reason": None,
                  "logprobs": {"tokens": ["token_id:2104"], "token_logprobs": [-0.1]}}]},
    {"choices": [{"index": 0, "text": "", "finish_reason": None,
                  "logprobs": {"tokens": ["token_id:132"], "token_logprobs": [-0.3]}}]},
    {"choices": [{"index": 0, "text": "é", "finish_reason": "length",
                  "logprobs": {"tokens": ["token_id:249"], "token_logprobs": [-0.2]}}]},
]


class VocabTokenizer(FakeTokenizer):
    """Bytes of three vocabulary ids, as a model's GGUF would give them."""

    PIECES: ClassVar[dict[int, bytes]] = {2104: b" caf", 132: b"\xc3", 249: b"\xa9"}

    def piece(self, token_id: int) -> bytes:
        return self.PIECES[token_id]


class TestDialects:
    """Per-server fields for exact replay, in the same single request (PLACE-5005)."""

    @pytest.mark.anyio
    async def test_llama_server_evaluates_each_prompt_without_its_prefix_cache(self) -> None:
        """``cache_prompt: false`` rides on the completion itself: one request per step."""
        seen: list[dict[str, object]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            return httpx.Response(200, content=_sse(_chunk("a"), _chunk("", "stop")))

        engine = OpenAIHttpEngine("http://engine", mock_identity(), FakeTokenizer(),
                                  transport=httpx.MockTransport(handler),
                                  dialect="llama-server")
        assert [item async for item in engine.stream(REQ)] == [Delta("a", 1), Finish("stop")]
        assert len(seen) == 1 and seen[0]["cache_prompt"] is False

    @pytest.mark.anyio
    async def test_vllm_chunks_give_engine_ids_and_vocabulary_bytes(self) -> None:
        """A character vLLM holds back as empty text still arrives as its own token."""
        seen: list[dict[str, object]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(json.loads(request.content))
            return httpx.Response(200, content=_sse(*VLLM_CHUNKS))

        engine = OpenAIHttpEngine("http://engine", mock_identity(), VocabTokenizer(),
                                  transport=httpx.MockTransport(handler), dialect="vllm")
        assert [item async for item in engine.stream(REQ)] == [
            Delta("", 2104, b" caf"), Delta("", 132, b"\xc3"), Delta("", 249, b"\xa9"),
            Finish("length")]
        assert (seen[0]["logprobs"], seen[0]["return_tokens_as_token_ids"]) == (0, True)


class TestBatchInvariance:
    """An engine declares whether its output depends on its batch (PLACE-5005)."""

    def _pool(self, **options: object) -> Pool:
        pc = PoolConfig(pool_id="gpu-0", engine="openai_http", slots_per_replica=4,
                        models=[ModelConfig(id="m", sha256="a" * 64)],
                        urls=["http://engine"], options={"dialect": "vllm", **options})
        return Pool(pc, remote_identity(pc, None))

    def test_a_batch_invariant_engine_serves_every_slot(self) -> None:
        """vLLM with VLLM_BATCH_INVARIANT=1: strict_replay may share the batch."""
        pool = self._pool(batch_invariant=True)
        assert [r.slots for r in pool.replicas] == [4]
        assert (pool.info().engine.batch_invariant, pool.info().engine.isolated_slots) == (
            True, False)

    def test_an_engine_that_is_not_runs_one_request_per_replica(self) -> None:
        """Every record and strict_replay step then has the engine's batch to itself."""
        pool = self._pool()
        assert [r.slots for r in pool.replicas] == [1]
        assert pool.info().engine.batch_invariant is False

    def test_the_declaration_is_part_of_the_build_fingerprint(self) -> None:
        """Changing it changes engine_build, so strict_replay refuses across it."""
        assert self._pool().identity.build_fingerprint != \
            self._pool(batch_invariant=True).identity.build_fingerprint

    @pytest.mark.anyio
    async def test_recorded_streams_replay_identically_on_concurrent_slots(self) -> None:
        """Two concurrent streams of a batch-invariant replica yield the same tokens."""
        pool = self._pool(batch_invariant=True)
        engine = OpenAIHttpEngine("http://engine", pool.identity, VocabTokenizer(),
                                  transport=httpx.MockTransport(
                                      lambda r: httpx.Response(200, content=_sse(*VLLM_CHUNKS))),
                                  dialect="vllm")
        results: list[list[StreamItem]] = []

        async def one() -> None:
            results.append([item async for item in engine.stream(REQ)])

        async with anyio.create_task_group() as tg:
            for _ in range(pool.replicas[0].slots):
                tg.start_soon(one)
        assert len(results) == 4 and all(r == results[0] for r in results)
