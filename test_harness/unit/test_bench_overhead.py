"""The pieces of ``python -m tools.bench.overhead``: the OpenAI-compatible mock server, the
LiteLLM peer's install guard, the benchmark's HTTP client."""

from __future__ import annotations

import asyncio
import pathlib

import httpx
import msgspec
import pytest

from tools.bench.mock_openai import app
from tools.bench.peers import ensure_litellm
from tools.bench.rawhttp import RawHttp


async def _mock(path: str, body: dict[str, object]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://mock") as http:
        return await http.post(path, json=body)


class TestMockOpenAI:
    """The mock server speaks enough llama-server for an orchestratord pool."""

    @pytest.mark.anyio
    async def test_a_streamed_completion_names_each_sampled_token(self) -> None:
        """``/v1/completions`` streams one chunk per token with its id and bytes, then a
        finish chunk and ``[DONE]``; the text is the seeded mock's."""
        resp = await _mock("/v1/completions", {"prompt": "The three primary colours are",
                                               "max_tokens": 2, "stream": True})
        chunks = [line[6:] for line in resp.text.split("\n\n") if line]
        first = msgspec.json.decode(chunks[0])["choices"][0]
        assert (len(chunks), chunks[-1], first["text"], first["logprobs"]) == (
            4, "[DONE]", "gate", {"content": [{"id": 123, "bytes": list(b"gate")}]})

    @pytest.mark.anyio
    async def test_tokenize_counts_words_and_the_bos(self) -> None:
        """``/tokenize`` with ``add_special`` is one BOS plus one token per word."""
        resp = await _mock("/tokenize", {"content": "a b c", "add_special": True})
        assert resp.json() == {"tokens": [1, 101, 102, 102]}


class TestPeerInstall:
    """The LiteLLM peer is never installed at a compromised release."""

    def test_release_1_107_0_is_refused_before_anything_runs(
            self, tmp_path: pathlib.Path) -> None:
        """Pinning 1.107.0 gives no venv and the reason; nothing is created."""
        venv, reason = ensure_litellm("litellm[proxy]==1.107.0", tmp_path / "v")
        assert (venv, reason, (tmp_path / "v").exists()) == (
            None, "refusing litellm[proxy]==1.107.0: release 1.107.0 was compromised", False)


class TestRawHttp:
    """The benchmark's client reads whole answers, chunked or not, on one connection."""

    @pytest.mark.anyio
    async def test_chunked_and_sized_answers_on_one_connection(self) -> None:
        """A chunked answer is joined without its framing, then a sized one is read on
        the same connection."""
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = RawHttp(f"http://127.0.0.1:{port}")
            first = await client.request("GET", "/a")
            second = await client.request("POST", "/b", b"{}")
            await client.aclose()
        assert [(r.status, r.body) for r in (first, second)] == [(200, b"hello world"),
                                                                   (201, b"ok")]
        assert len(seen) == 2
