"""The demo's round trip through a recording on the mock engine: the twin, run everywhere,
of the real-engine test in ``test_harness/integration/test_roundtrip_engine.py``
(REC-7110, REC-7111, REC-7112)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from orchestrator_core.config import mock_config
from orchestratord.pytest_plugin import ServerThread
from test_harness.roundtrip import no_engine, record_demo, replay_demo, shared_sandboxes


@pytest.fixture(scope="module")
def trip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo recorded on a mock-engine server, exported, imported into a server with
    no engine and replayed there."""
    root = pathlib.Path(tmp_path_factory.mktemp("trip"))
    cfg = shared_sandboxes(mock_config(data_dir=str(root / "a")), str(root / "sandboxes"))
    first = ServerThread(cfg)
    try:
        recorded = anyio.run(record_demo, first.url, str(root / "sandboxes"))
    finally:
        first.stop()
    second = ServerThread(no_engine(cfg, str(root / "b")))
    try:
        yield {"recorded": recorded,
               "replayed": anyio.run(replay_demo, second.url, recorded)}
    finally:
        second.stop()


class TestMockRoundTrip:
    """Record on one server, replay from the file on another with no engine."""

    def test_every_replayed_stream_equals_the_original_with_no_engine_request(
            self, trip: dict[str, Any]) -> None:
        """[REC-7110] [REC-7012] The replay of the imported demo Run on a server with no
        engine serves each of its seven Steps' SSE bytes (the mock's plan suggests one
        tool) exactly as the recording server did, and that server counts 0 engine
        requests."""
        recorded, replayed = trip["recorded"], trip["replayed"]
        assert (replayed["imported"].steps, len(recorded["streams"])) == (7, 7)
        assert replayed["streams"] == recorded["streams"]
        assert replayed["engine_requests"] == 0

    def test_the_imported_steps_answer_their_rendered_prompts(
            self, trip: dict[str, Any]) -> None:
        """[REC-7112] Each imported LLM Step answers ``GET /v1/steps/{id}/prompt`` with
        the text, hash and template the recording server answered."""
        recorded, replayed = trip["recorded"], trip["replayed"]
        assert [status for status, _ in recorded["prompts"].values()] == [200, 200, 200]
        assert replayed["prompts"] == recorded["prompts"]
