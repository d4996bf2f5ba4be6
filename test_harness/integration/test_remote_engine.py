"""A remote pool configured by URL only, against a real engine server process (PLACE-5007).

``python -m llama_cpp.server`` (llama-cpp-python's own server, the library the local worker
uses) runs as a separate process on loopback with the local worker's settings. The
remote pool's config names its URL and dialect, and no model file: the orchestrator side
renders, counts and tokenizes through the server. The same steps run on the local
llama.cpp worker; the two must agree on token ids, token texts and output bytes, and
``tokens_in`` must equal the local tokenizer's count.

Where they cannot agree, the test states it: the server streams text, so a character
split over two tokens arrives as one chunk whose bytes go to the token that completes it
(the local worker gives each token its own bytes); ids, texts and the output's bytes are
still equal.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from contracts.errors import InvalidParams
from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig
from test_harness.support import http_run_step, server_process
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter, ReplicaSpec
from worker_adapters.llamacpp import GgufTokenizer, default_model_path
from worker_adapters.openai_http import OpenAIHttpEngine, constraint_fields
from worker_adapters.registry import LlamaCppDriver, OpenAIHttpDriver
from worker_adapters.token_bytes import TokenText

pytestmark = [pytest.mark.engine, pytest.mark.anyio]

ALIAS = "smollm2-135m-instruct-q4_1"
CHATML_JA = ("<|im_start|>user\nTranslate to Japanese: good morning<|im_end|>\n"
             "<|im_start|>assistant\n")
CASES = [("The capital of France is", 0.0), ("The capital of France is", 0.8),
         ("Écris une phrase en japonais: ", 0.9), (CHATML_JA, 0.0)]
SEED = 7


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-cpp-python's server with the worker's settings, in a clean environment
    (its settings are read from the environment too), on a free loopback port."""
    # Imports llama_cpp as the server does, which closes its /dev/null handles at exit.
    constraint_fields("gbnf", {"type": "string"})
    home = tmp_path_factory.mktemp("lcp")
    port = _free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
            "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
            "--n_ctx", "2048", "--n_batch", "512", "--n_ubatch", "512", "--n_threads", "1",
            "--n_threads_batch", "1", "--flash_attn", "false", "--logits_all", "false",
            "--last_n_tokens_size", "64", "--interrupt_requests", "false",
            "--verbose", "false"]
    env = {"PATH": os.defpath, "HOME": str(home), "LANG": "C", "OMP_NUM_THREADS": "1"}
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (home / "server.log").read_text()
            try:
                if httpx.get(f"{url}/v1/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _remote_pool(url: str) -> PoolConfig:
    """The remote pool: a URL and a dialect; no model path, no declared hash."""
    return PoolConfig(pool_id="remote-0", engine="openai_http", urls=[url],
                      models=[ModelConfig(id="remote:smollm2", family="smollm2",
                                          context_tokens=2048)],
                      options={"dialect": "llama-cpp-python"})


def _local_pool() -> PoolConfig:
    return PoolConfig(pool_id="cpu-0", engine="llamacpp",
                      models=[ModelConfig(id="local:smollm2", context_tokens=2048)],
                      options={"n_threads": 1, "n_batch": 512})


@pytest.fixture(scope="module")
async def adapters(engine_server: str, tmp_path_factory: pytest.TempPathFactory) -> \
        AsyncIterator[tuple[EngineAdapter, EngineAdapter]]:
    """(remote adapter through the driver, local worker adapter)."""
    data = tmp_path_factory.mktemp("local")
    remote_driver, local_driver = OpenAIHttpDriver(), LlamaCppDriver()
    remote_pc, local_pc = _remote_pool(engine_server), _local_pool()
    remote = await remote_driver.start(remote_pc, await remote_driver.identity(remote_pc),
                                       ReplicaSpec("remote-0/r0", 0, 1, data))
    local = await local_driver.start(local_pc, await local_driver.identity(local_pc),
                                     ReplicaSpec("cpu-0/r0", 0, 1, data))
    try:
        yield remote.adapter, local.adapter
    finally:
        await remote.adapter.aclose()
        await local.adapter.aclose()
        assert local.process is not None
        await local.process.stop()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-scoped async fixtures need a module-scoped backend."""
    return "asyncio"


def _request(prompt: str, temperature: float, max_tokens: int = 8) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, seed=SEED, temperature=temperature, top_k=40,
                             top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                             max_tokens=max_tokens)


async def _run(engine: EngineAdapter, prompt: str, temperature: float, *,
               after_itself: bool = False) -> tuple[int, list[Delta]]:
    """tokens_in and tokens of one step. On the remote server, a one-token completion of
    ``"\n"`` first leaves it a kept prefix that the measured prompt does not share (its
    first token differs), unless ``after_itself``: then the same prompt runs first."""
    if isinstance(engine, OpenAIHttpEngine):
        warmup = prompt if after_itself else "\n"
        async for _item in engine.stream(_request(warmup, temperature, 1 if not
                                                  after_itself else 8)):
            pass
    prepared = await engine.aprepare(prompt=prompt, messages=None)
    deltas = [d async for d in engine.stream(_request(prepared.text, temperature))
              if isinstance(d, Delta)]
    return prepared.tokens_in, deltas


def _texts(deltas: list[Delta]) -> list[str]:
    text = TokenText()
    return [text.push(d.data if d.data is not None else d.text.encode()) for d in deltas]


class TestRemotePoolByUrl:
    """Configured by URL only, the remote pool computes what the local engine computes."""

    async def test_identity_comes_from_the_server(
            self, adapters: tuple[EngineAdapter, EngineAdapter]) -> None:
        """Version and served model are what the server reports; no file was read."""
        remote, _local = adapters
        assert isinstance(remote, OpenAIHttpEngine) and remote.tokenizer is None
        assert (remote.identity.name, remote.identity.version) == (
            "openai_http:llama-cpp-python", "llama-cpp-python 0.3.36")
        assert remote.identity.settings["engine_report"] == {
            "dialect": "llama-cpp-python", "version": "llama-cpp-python 0.3.36",
            "model": ALIAS, "context_tokens": None, "settings": {}}

    @pytest.mark.parametrize(("prompt", "temperature"), CASES)
    async def test_prompt_steps_match_the_local_engine(
            self, adapters: tuple[EngineAdapter, EngineAdapter], prompt: str,
            temperature: float) -> None:
        """Same tokens_in, token ids, token texts and output bytes as the local worker,
        and tokens_in equals the local tokenizer's count."""
        remote, local = adapters
        r_in, r_tokens = await _run(remote, prompt, temperature)
        l_in, l_tokens = await _run(local, prompt, temperature)
        tokenizer = GgufTokenizer(default_model_path())
        assert r_in == l_in == tokenizer.count(prompt)
        del tokenizer
        assert [d.token_id for d in r_tokens] == [d.token_id for d in l_tokens]
        assert len(r_tokens) == 8
        assert _texts(r_tokens) == _texts(l_tokens)
        assert b"".join(d.data or b"" for d in r_tokens) == \
            b"".join(d.data or b"" for d in l_tokens)
        whole = [(d.token_id, d.data) for d in l_tokens
                 if d.data is not None and _complete(d.data)]
        assert [(d.token_id, d.data) for d in r_tokens
                if (d.token_id, d.data) in whole] == whole

    async def test_a_split_character_gives_its_bytes_to_the_completing_token(
            self, adapters: tuple[EngineAdapter, EngineAdapter]) -> None:
        """The Japanese answer's first character is two tokens: the remote stream gives
        the first none of its bytes and the second all three."""
        remote, local = adapters
        _, r_tokens = await _run(remote, CHATML_JA, 0.0)
        _, l_tokens = await _run(local, CHATML_JA, 0.0)
        assert [(d.token_id, d.data) for d in l_tokens[:2]] == [
            (7365, b"\xe3\x81"), (237, b"\x93")]
        assert [(d.token_id, d.data) for d in r_tokens[:2]] == [
            (7365, b""), (237, b"\xe3\x81\x93")]

    async def test_a_prompt_sharing_the_servers_kept_prefix_is_evaluated_otherwise(
            self, adapters: tuple[EngineAdapter, EngineAdapter]) -> None:
        """Measured limit of llama-cpp-python's server: it keeps its last request's
        cache and evaluates only what a new prompt does not share with it, so the same
        prompt right after itself takes another path: here its second token differs."""
        remote, local = adapters
        _, r_tokens = await _run(remote, CHATML_JA, 0.0, after_itself=True)
        _, l_tokens = await _run(local, CHATML_JA, 0.0)
        assert [d.token_id for d in r_tokens[:2]] == [7365, 228]
        assert [d.token_id for d in l_tokens[:2]] == [7365, 237]

    async def test_messages_are_refused_because_the_server_has_no_template_endpoint(
            self, adapters: tuple[EngineAdapter, EngineAdapter]) -> None:
        """INVALID_PARAMS naming input.messages, before any engine request."""
        remote, _local = adapters
        before = remote.requests
        with pytest.raises(InvalidParams) as info:
            await remote.aprepare(prompt=None, messages=[{"role": "user", "content": "hi"}])
        assert info.value.data == {"field": "input.messages", "dialect": "llama-cpp-python"}
        assert remote.requests == before


def _complete(data: bytes) -> bool:
    """True when the bytes are whole UTF-8 characters."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_a_step_on_the_remote_pool_over_http(engine_server: str,
                                             tmp_path: pathlib.Path) -> None:
    """An orchestrator whose only pool is the remote server streams a prompt step, with
    tokens_in from the server's count and ids from its tokenizer."""
    cfg = ServerConfig(pools=[_remote_pool(engine_server)])
    with server_process(cfg, tmp_path) as (_proc, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"suite": "remote"}}).json()
        run = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 11}).json()
        body: dict[str, Any] = {"type": "llm_call", "client_token": "remote-1", "input": {
            "model": "remote:smollm2", "prompt": "The capital of France is",
            "params": {"temperature": 0.0, "seed": SEED, "max_tokens": 8}}}
        resp, frames = http_run_step(http, run["run_id"], body)
        assert resp.status_code == 201, resp.text
        tokens = [f for f in frames if f["event"] == "token"]
        assert [f["event"] for f in frames][-1] == "end"
        assert len(tokens) == 8
        assert '"id":7042' in tokens[0]["data"]
