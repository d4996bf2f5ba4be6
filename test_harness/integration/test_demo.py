"""The demo Flow end to end: all six Step types, recorded and replayed in both modes.

[NERVE-4010] [NERVE-4013] [NERVE-4021] On a real server process. The mock-engine run
is fast; the real-engine run is the acceptance of the demo on SmolLM2 with llama.cpp:
the token streams, the ``tool_suggest`` frames and every Step output are identical in
all three modes, and ``replay`` makes zero engine, tool and file-system calls, as the
server's own Prometheus counters count them.
"""

from __future__ import annotations

import pathlib
from typing import Any

import anyio
import pytest

from orchestratord.client import OrchestratorClient
from tools.demo import run_flow_modes
from tools.servers import start_server, stop_server

DOCUMENT = pathlib.Path(__file__).resolve().parents[2] / "specs" / "20_stream_and_replay.md"


def _demo(tmp_path: pathlib.Path, *, mock: bool) -> dict[str, Any]:
    proc, url = start_server(mock=mock, data_dir=str(tmp_path))

    async def go() -> dict[str, Any]:
        async with OrchestratorClient(url, timeout_s=120.0) as client:
            return await run_flow_modes(client, DOCUMENT.read_text()[:1500])
    try:
        return anyio.run(go)
    finally:
        assert stop_server(proc) == 0


def _check(report: dict[str, Any], tmp_path: pathlib.Path) -> None:
    assert report["step_types"] == ["checkpoint", "fs_op", "gate_eval", "llm_call",
                                    "llm_plan", "tool_call"]
    record, replay, strict = report["modes"]
    valid = [s for s in report["outputs"]["plan"] if s["valid"]]
    assert record["steps"] == replay["steps"] == strict["steps"] == 6 + len(valid) >= 7
    assert record["engine_requests"] == 3 and record["fs_operations"] == 1
    assert record["tool_executions"] == len(valid)
    assert (replay["engine_requests"], replay["tool_executions"], replay["fs_operations"]) \
        == (0, 0, 0)
    assert (strict["engine_requests"], strict["tool_executions"], strict["fs_operations"]) \
        == (3, 0, 0)
    for mode in ("replay", "strict_replay"):
        assert report[f"{mode}_byte_identical"], mode
        assert report[f"{mode}_outputs_identical"], mode
    assert report["outputs"]["gate"] is True
    assert set(report["outputs"]["title"]) == {"title", "keywords"}
    written = pathlib.Path(report["fs_root"]) / "report.md"
    assert written.read_text().startswith("# Report\n")
    assert str(written).startswith(str(tmp_path))
    assert [p.name for p in pathlib.Path(report["fs_root"]).iterdir()] == ["report.md"]


def test_demo_on_the_mock_engine(tmp_path: pathlib.Path) -> None:
    """Every step type recorded, replayed and strict-replayed, with the server's
    counters proving replay touched nothing."""
    _check(_demo(tmp_path, mock=True), tmp_path)


@pytest.mark.engine
def test_demo_on_the_real_engine(tmp_path: pathlib.Path) -> None:
    """The same on llama.cpp with SmolLM2: grammar-constrained plan and title included."""
    _check(_demo(tmp_path, mock=False), tmp_path)
