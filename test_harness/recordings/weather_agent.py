"""A two-call agent on the official OpenAI SDK, unchanged but for its base URL: the agent
of ``weather_agent.jsonl``, recorded on the mock engine (REC-7040).

Regenerate the recording with ``python -m test_harness.recordings.weather_agent`` (a
mock-engine server in this process, then the Run's export).
"""

from __future__ import annotations

import pathlib
import tempfile

from openai import OpenAI

MODEL = "mock:echo-1"
RECORDING = pathlib.Path(__file__).with_name("weather_agent.jsonl")


def weather_agent(base_url: str, city: str = "Paris") -> str:
    """Ask for the weather, then for it in one line; the second answer."""
    question = {"role": "user", "content": f"What is the weather in {city}?"}
    with OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        first = client.chat.completions.create(
            model=MODEL, messages=[question], max_tokens=12, temperature=0)  # type: ignore[list-item]
        answer = first.choices[0].message.content or ""
        second = client.chat.completions.create(
            model=MODEL, max_tokens=12, temperature=0,
            messages=[question, {"role": "assistant", "content": answer},  # type: ignore[list-item]
                      {"role": "user", "content": "Say it in one line."}])
    return second.choices[0].message.content or ""


def record(path: pathlib.Path = RECORDING) -> str:
    """Run the agent on a fresh mock-engine server in this process and write its Run's
    recording to ``path``; the agent's answer."""
    import httpx
    import msgspec

    from orchestrator_core.config import mock_config
    from orchestratord.pytest_plugin import ServerThread

    with tempfile.TemporaryDirectory() as data_dir:
        server = ServerThread(mock_config(data_dir=data_dir))
        try:
            with httpx.Client(base_url=server.url) as http:
                flow = http.post("/v1/flows", json={"ast_ir": {"agent": "weather"}}).json()
                run = http.post(f"/v1/flows/{flow['flow_id']}/runs",
                                json={"seed": 42}).json()
                answer = weather_agent(f"{server.url}/v1/runs/{run['run_id']}/openai/v1")
                path.write_bytes(http.get(f"/v1/runs/{run['run_id']}/recording").content)
        finally:
            server.stop()
    return str(msgspec.json.encode(answer).decode())


if __name__ == "__main__":
    print(record())
