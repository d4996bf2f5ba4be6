"""The official ``openai`` SDK against a real ``orchestratord serve`` process on the mock
engine: record, replay, strict_replay and parallel calls through the facade.

[OAI-6007] [OAI-6004] [OAI-6001] [OAI-6003] Engine requests are counted by the server's
own Prometheus counter ``orchestrator_engine_requests_total``.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from test_harness.support import REAL_MODEL
from tools.servers import start_server, stop_server

MODEL = "mock:echo-1"
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string"}}}}}
ANSWER: Any = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
    "type": "object", "additionalProperties": False, "required": ["city", "days"],
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
ASK: Any = [{"role": "system", "content": "You are terse."},
       {"role": "user", "content": "What is the weather in Paris?"}]


class Server:
    """A server process and the helpers the tests use on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def engine_requests(self) -> int:
        """The server's engine request counter, summed over pools."""
        text = self.http.get("/metrics").text
        return sum(int(float(v)) for v in re.findall(
            r"^orchestrator_engine_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))

    def run(self, mode: str = "record", replay_of: str | None = None) -> str:
        """A new Run of one flow in ``mode``."""
        flow = self.http.post("/v1/flows", json={"ast_ir": {"agent": "openai"}}).json()
        body: dict[str, Any] = {"seed": 11, "mode": mode}
        if replay_of is not None:
            body["replay_of"] = replay_of
        resp = self.http.post(f"/v1/flows/{flow['flow_id']}/runs", json=body)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["run_id"])

    def base(self, run_id: str) -> str:
        """The SDK base URL of a Run."""
        return f"{self.url}/v1/runs/{run_id}/openai/v1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One mock-engine server process for the module."""
    data_dir = tmp_path_factory.mktemp("oai-server")
    proc, url = start_server(mock=True, data_dir=str(data_dir))
    srv = Server(url)
    try:
        yield srv
    finally:
        srv.http.close()
        assert stop_server(proc) == 0


def agent(client: OpenAI, model: str = MODEL) -> list[bytes]:
    """A small agent: a tool call, a structured answer, a streamed answer, a completion;
    the raw bytes of every answer."""
    out = []
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice="required")
    call = raw.parse().choices[0].message.tool_calls
    assert call is not None and raw.parse().choices[0].finish_reason == "tool_calls"
    out.append(raw.content)
    follow: Any = [*ASK, {"role": "assistant", "tool_calls": [c.model_dump() for c in call]},
              {"role": "tool", "tool_call_id": call[0].id, "content": "sunny, 21 C"}]
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=follow, response_format=ANSWER)
    out.append(raw.content)
    with client.chat.completions.with_streaming_response.create(
            model=model, messages=ASK, stream=True, max_tokens=12,
            stream_options={"include_usage": True}) as resp:
        out.append(b"".join(resp.iter_bytes()))
    out.append(client.completions.with_raw_response.create(
        model=model, prompt="Once upon a time", max_tokens=6).content)
    return out


def record_replay_strict(server: Server, model: str) -> None:
    """The agent recorded (4 engine requests), replayed (the recorded bytes, 0 engine
    requests) and strict-replayed (the recorded bytes, 4 engine requests)."""
    rec = server.run()
    before = server.engine_requests()
    recorded = agent(OpenAI(base_url=server.base(rec), api_key="k"), model)
    assert server.engine_requests() - before == 4
    replay = server.run("replay", rec)
    before = server.engine_requests()
    assert agent(OpenAI(base_url=server.base(replay), api_key="k"), model) == recorded
    assert server.engine_requests() - before == 0
    strict = server.run("strict_replay", rec)
    before = server.engine_requests()
    assert agent(OpenAI(base_url=server.base(strict), api_key="k", timeout=300.0),
                 model) == recorded
    assert server.engine_requests() - before == 4


class TestRecordReplay:
    """One agent recorded, replayed and strict-replayed through the SDK."""

    def test_replay_serves_the_recording_with_no_engine_request(self, server: Server) -> None:
        """[OAI-6007] A replay answers the recorded bytes with 0 engine requests; a
        strict_replay runs every call again and answers the same bytes."""
        record_replay_strict(server, MODEL)

    @pytest.mark.engine
    def test_the_same_on_the_real_engine(self, tmp_path: pathlib.Path) -> None:
        """[OAI-6007] The same agent on llama.cpp with SmolLM2: tools and response_format
        grammar-constrained, replay free, strict_replay byte-identical."""
        proc, url = start_server(data_dir=str(tmp_path))
        srv = Server(url)
        try:
            record_replay_strict(srv, REAL_MODEL)
        finally:
            srv.http.close()
            assert stop_server(proc) == 0

    def test_a_changed_prompt_in_replay_names_the_field(self, server: Server) -> None:
        """[OAI-6004] A replayed call with another user message raises ConflictError
        whose message names the nearest recorded call and ``messages[1].content``."""
        rec = server.run()
        OpenAI(base_url=server.base(rec), api_key="k").chat.completions.create(
            model=MODEL, messages=ASK, max_tokens=4)
        replay = server.run("replay", rec)
        changed: Any = [ASK[0], {"role": "user", "content": "What is the weather in Rome?"}]
        with pytest.raises(openai.ConflictError) as caught:
            OpenAI(base_url=server.base(replay), api_key="k",
                   max_retries=0).chat.completions.create(model=MODEL, messages=changed,
                                                          max_tokens=4)
        err = caught.value.body
        assert isinstance(err, dict)
        assert (err["code"], err["param"], err["type"]) == \
            ("NONDETERMINISM", "messages[1].content", "invalid_request_error")
        assert err["message"].endswith("which differs at messages[1].content")
        assert "the nearest recorded call is step stp_" in err["message"]


def _user(text: str) -> Any:
    return [{"role": "user", "content": text}]


async def _parallel(client: AsyncOpenAI) -> tuple[list[str], list[str]]:
    """4 parallel calls, two of them identical: their answers and Step ids, in call
    order."""
    prompts = ["alpha", "beta", "alpha", "gamma"]
    answers = [""] * 4
    steps = [""] * 4

    async def one(i: int) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=_user(prompts[i]),
            temperature=0.9, max_tokens=6)
        answers[i] = raw.parse().choices[0].message.content or ""
        steps[i] = raw.headers["x-step-id"]

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
    return answers, steps


class TestParallelCalls:
    """Concurrent calls of one agent match their recording by occurrence."""

    def test_four_parallel_calls_record_and_replay_twenty_times(self, server: Server) -> None:
        """[OAI-6007] [OAI-6004] 4 parallel async calls (two identical) record, then
        replay with the same answers and 0 engine requests, 20 times in a row."""
        async def loop() -> None:
            for _ in range(20):
                rec = server.run()
                async with AsyncOpenAI(base_url=server.base(rec), api_key="k") as client:
                    recorded, _ = await _parallel(client)
                replay = server.run("replay", rec)
                before = server.engine_requests()
                async with AsyncOpenAI(base_url=server.base(replay), api_key="k") as client:
                    replayed, steps = await _parallel(client)
                assert (sorted(replayed[::2]), replayed[1], replayed[3]) == \
                    (sorted(recorded[::2]), recorded[1], recorded[3])
                assert server.engine_requests() == before
                tokens = [self_token(server, sid) for sid in steps]
                assert sorted(t.rsplit(":", 1)[1] for t in tokens) == ["0", "0", "0", "1"]
                assert tokens[0].rsplit(":", 1)[0] == tokens[2].rsplit(":", 1)[0]
        anyio.run(loop)

    def test_async_streaming_is_the_same_call_as_the_plain_one(self, server: Server) -> None:
        """[OAI-6001] [OAI-6004] The async SDK's streamed chunks join into the text a
        plain call of the same request returns, and the plain call is occurrence 1 of
        the streamed call's key."""
        rec = server.run()

        async def go() -> tuple[str, str, str]:
            async with AsyncOpenAI(base_url=server.base(rec), api_key="k") as client:
                stream = await client.chat.completions.create(
                    model=MODEL, messages=ASK, max_tokens=10, stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=ASK, max_tokens=10)
                plain = raw.parse().choices[0].message.content or ""
                return text, plain, raw.headers["x-step-id"]
        streamed, plain, step_id = anyio.run(go)
        assert streamed == plain and streamed != ""
        assert self_token(server, step_id).endswith(":1")


def self_token(server: Server, step_id: str) -> str:
    """The client_token of a Step, through the native API."""
    step = server.http.get(f"/v1/steps/{step_id}").json()
    assert step["type"] == "llm_call"
    return str(step["client_token"])
