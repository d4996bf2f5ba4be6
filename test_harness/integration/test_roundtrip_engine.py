"""The demo's round trip through a recording, recorded on the real engine (REC-7110,
REC-7111, REC-7112): an ``orchestratord serve`` process on llama.cpp with SmolLM2-135M
records the demo Flow; its Run is exported, imported into a fresh in-process server with
no pool at all, and replayed there with the demo's own interpreter. The mock twin is
``test_harness/unit/test_roundtrip.py``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import anyio
import pytest

from orchestrator_core.config import default_config
from orchestratord.pytest_plugin import ServerThread
from test_harness.roundtrip import (
    LLM_STEPS,
    no_engine,
    record_demo,
    replay_demo,
    shared_sandboxes,
)
from test_harness.support import server_process

pytestmark = pytest.mark.engine


def test_a_real_engine_recording_replays_byte_for_byte_on_a_server_with_no_engine(
        tmp_path: pathlib.Path) -> None:
    """[REC-7110] [REC-7112] A real-engine recording of the demo, imported into a fresh
    server with no engine, replays every Step's SSE bytes exactly with 0 engine requests,
    and its LLM Steps answer the rendered prompts the recording server answered."""
    cfg = shared_sandboxes(default_config(data_dir=str(tmp_path / "a")),
                           str(tmp_path / "sandboxes"))
    with server_process(cfg, tmp_path / "a") as (_proc, url):
        recorded: dict[str, Any] = anyio.run(record_demo, url, str(tmp_path / "sandboxes"))
    second = ServerThread(no_engine(cfg, str(tmp_path / "b")))
    try:
        replayed = anyio.run(replay_demo, second.url, recorded)
    finally:
        second.stop()
    assert replayed["imported"].steps == len(recorded["streams"])
    assert len(recorded["streams"]) in (7, 8)  # the plan suggests one tool or two
    assert replayed["streams"] == recorded["streams"]
    assert replayed["engine_requests"] == 0
    assert [recorded["prompts"][n][0] for n in LLM_STEPS] == [200, 200, 200]
    assert {n: recorded["prompts"][n][1]["template"] for n in LLM_STEPS} == {
        "summary": "gguf", "plan": "gguf", "title": "gguf"}
    assert replayed["prompts"] == recorded["prompts"]
