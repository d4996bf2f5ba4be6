"""An agent framework, unchanged but for its base URL, on the real engine.

[OAI-6008] pydantic-ai's ``OpenAIChatModel`` runs a 3-step tool-using agent (two tool
calls, then an answer) against an ``orchestratord serve`` process on llama.cpp with
SmolLM2-135M: recorded, replayed with 0 engine requests (the server's own counter) and
strict-replayed with every response byte-identical to the recording.
"""

from __future__ import annotations

import pathlib
import re
from typing import Annotated, Any

import anyio
import httpx
import pytest
from openai import AsyncOpenAI
from pydantic import Field
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings
from pydantic_ai.tools import ToolDefinition

from test_harness.support import REAL_MODEL
from tools.servers import start_server, stop_server

pytestmark = pytest.mark.engine

SETTINGS = ModelSettings(temperature=0.0, max_tokens=48, seed=5, parallel_tool_calls=False)
"""Greedy, one tool call at a time, and short: each call decodes at most 48 tokens."""


class Recorder(httpx.AsyncBaseTransport):
    """An httpx transport that keeps the body of every response it passes on."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Forward ``request`` and keep its response's body."""
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        self.bodies.append(body)
        return httpx.Response(response.status_code, headers=response.headers, content=body,
                              request=request)

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.inner.aclose()


def _only_at(step: int) -> Any:
    """A tool ``prepare`` offering the tool at the agent's ``step``-th model call only,
    so the weak model's constrained choice is always the intended tool."""
    async def prepare(ctx: RunContext[None], tool: ToolDefinition) -> ToolDefinition | None:
        return tool if ctx.run_step == step else None
    return prepare


class ToolsFirst(AbstractCapability[None]):
    """Forces a tool call (``tool_choice: required``) at the first two model calls."""

    def get_model_settings(self) -> Any:
        """Per step: ``required`` at steps 1 and 2, the default after."""
        def settings(ctx: RunContext[None]) -> ModelSettings:
            return ModelSettings(tool_choice="required") if ctx.run_step <= 2 else ModelSettings()
        return settings


def _agent(oai: AsyncOpenAI) -> Agent[None, str]:
    agent = Agent(OpenAIChatModel(REAL_MODEL, provider=OpenAIProvider(openai_client=oai)),
                  system_prompt="Call the tool, then answer in one short line.",
                  model_settings=SETTINGS, capabilities=[ToolsFirst()])

    @agent.tool_plain(prepare=_only_at(1))
    def get_weather(city: Annotated[str, Field(max_length=12)]) -> str:
        """The weather in a city, in Celsius."""
        return "sunny, 21 C"

    @agent.tool_plain(prepare=_only_at(2))
    def to_fahrenheit(celsius: Annotated[int, Field(ge=-90, le=60)]) -> str:
        """Celsius to Fahrenheit."""
        return f"{celsius * 9 / 5 + 32:.1f} F"

    return agent


def _engine_requests(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    return sum(int(float(v)) for v in re.findall(
        r"^orchestrator_engine_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


async def _run_agent(base: str) -> tuple[str, list[str], list[bytes]]:
    """The agent's answer, the kinds of its message parts and every response body."""
    recorder = Recorder()
    async with httpx.AsyncClient(transport=recorder, timeout=300.0) as http:
        oai = AsyncOpenAI(base_url=base, api_key="k", http_client=http,  # type: ignore[arg-type]
                          max_retries=0)
        result = await _agent(oai).run("What is the weather in Paris?")
    kinds: list[str] = [p.part_kind for m in result.all_messages() for p in m.parts]
    return result.output, kinds, recorder.bodies


def test_a_pydantic_ai_agent_on_llama_cpp_records_replays_and_strict_replays(
        tmp_path: pathlib.Path) -> None:
    """[OAI-6008] The 3-step agent makes 3 engine requests when recording, 0 when
    replaying and 3 when strict-replaying, and all three runs receive the same bytes."""
    proc, url = start_server(data_dir=str(tmp_path))
    http = httpx.Client(base_url=url, timeout=30.0)
    try:
        flow = http.post("/v1/flows", json={"ast_ir": {"agent": "pydantic-ai"}}).json()
        runs = f"/v1/flows/{flow['flow_id']}/runs"
        rec = http.post(runs, json={"seed": 5}).json()["run_id"]
        out = []
        for mode in ("record", "replay", "strict_replay"):
            run_id = rec if mode == "record" else http.post(runs, json={
                "seed": 5, "mode": mode, "replay_of": rec}).json()["run_id"]
            before = _engine_requests(http)
            answer, kinds, bodies = anyio.run(_run_agent, f"{url}/v1/runs/{run_id}/openai/v1")
            out.append((answer, kinds, bodies, _engine_requests(http) - before))
    finally:
        http.close()
        assert stop_server(proc) == 0
    record, replay, strict = out
    assert record[1] == ["system-prompt", "user-prompt", "tool-call", "tool-return",
                         "tool-call", "tool-return", "text"]
    assert (record[3], replay[3], strict[3]) == (3, 0, 3)
    assert len(record[2]) == 3
    assert replay[:3] == record[:3] and strict[:3] == record[:3]
