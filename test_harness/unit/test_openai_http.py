"""The OpenAI-compatible streaming adapter over httpx.MockTransport (STREAM-2005, PLACE-5003)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import httpx
import pytest

from contracts.errors import EngineError
from worker_adapters.base import CompletionRequest, Delta, Finish, StreamItem
from worker_adapters.mock import mock_identity
from worker_adapters.openai_http import OpenAIHttpEngine

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
