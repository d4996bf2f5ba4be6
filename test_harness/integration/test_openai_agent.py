"""An agent framework, unchanged but for its base URL, through the OpenAI facade.

[OAI-6007] [OAI-6003] [OAI-6004] pydantic-ai's ``OpenAIChatModel`` runs a 3-step
tool-using agent (two tool calls, then an answer) on a scripted mock engine, in-process:
recorded, replayed with no engine request, and strict-replayed with the same messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from litestar.testing import AsyncTestClient
from openai import AsyncOpenAI
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from orchestrator_core.config import PoolConfig, mock_config
from orchestratord.app import create_app
from test_harness.support import MOCK_MODEL
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter, Finish, StreamItem
from worker_adapters.mock import MockEngine
from worker_adapters.registry import default_drivers

PLAN = [{"intents": [{"tool": "get_weather", "args": {"city": "Paris"}}]},
        {"intents": [{"tool": "to_fahrenheit", "args": {"celsius": 21}}]},
        {"content": "Paris is sunny, 69.8 F."}]
"""What the scripted model answers after 0, 1 and 2 tool results."""


class Scripted:
    """A mock engine answering :data:`PLAN` by the number of tool results in the prompt,
    counting its requests."""

    def __init__(self) -> None:
        self.requests = 0

    def factory(self, pc: PoolConfig, index: int) -> EngineAdapter:
        async def handler(req: CompletionRequest) -> AsyncIterator[StreamItem]:
            self.requests += 1
            text = json.dumps(PLAN[min(req.prompt.count("Tool result ("), 2)])
            for i in range(0, len(text), 5):
                yield Delta(text=text[i:i + 5], token_id=600 + i)
            yield Finish(reason="stop")
        return MockEngine(handler)


def _agent(client: AsyncTestClient[Any], run_id: str) -> Agent[None, str]:
    oai = AsyncOpenAI(base_url=f"http://127.0.0.1/v1/runs/{run_id}/openai/v1", api_key="k",
                      http_client=client, max_retries=0)  # type: ignore[arg-type]
    agent = Agent(OpenAIChatModel(MOCK_MODEL, provider=OpenAIProvider(openai_client=oai)),
                  system_prompt="Use the tools, then answer in one line.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city, in Celsius."""
        return f"{city}: sunny, 21 C"

    @agent.tool_plain
    def to_fahrenheit(celsius: float) -> float:
        """Celsius to Fahrenheit."""
        return celsius * 9 / 5 + 32

    return agent


def _messages(result: Any) -> list[Any]:
    """The run's messages without what the framework adds itself (timestamps, its ids)
    and the base URL (it names each Run)."""
    drop = {"timestamp", "provider_response_id", "run_id", "provider_details",
            "conversation_id", "provider_url"}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    return list(clean(json.loads(ModelMessagesTypeAdapter.dump_json(result.all_messages()))))


def test_a_pydantic_ai_agent_records_replays_and_strict_replays() -> None:
    """[OAI-6007] A 3-step pydantic-ai tool agent records 3 engine requests, replays with
    0, strict-replays with 3, and each run sees the same messages and answer."""
    engine = Scripted()
    app = create_app(mock_config(), drivers=default_drivers(mock_factory=engine.factory))

    async def go() -> list[tuple[str, list[Any], int]]:
        async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
            flow = (await client.post("/v1/flows", json={"ast_ir": {"agent": 1}})).json()
            runs = f"/v1/flows/{flow['flow_id']}/runs"
            rec = (await client.post(runs, json={"seed": 3})).json()["run_id"]
            out = []
            for mode in ("record", "replay", "strict_replay"):
                run_id = rec if mode == "record" else (await client.post(runs, json={
                    "seed": 3, "mode": mode, "replay_of": rec})).json()["run_id"]
                before = engine.requests
                result = await _agent(client, run_id).run(
                    "What is the weather in Paris, in Fahrenheit?")
                out.append((result.output, _messages(result), engine.requests - before))
            return out
    record, replay, strict = anyio.run(go)
    assert record[0] == "Paris is sunny, 69.8 F."
    assert [kind for m in record[1] for kind in [p["part_kind"] for p in m["parts"]]] == [
        "system-prompt", "user-prompt", "tool-call", "tool-return", "tool-call",
        "tool-return", "text"]
    assert (record[2], replay[2], strict[2]) == (3, 0, 3)
    assert replay[:2] == record[:2] and strict[:2] == record[:2]
