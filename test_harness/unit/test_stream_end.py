"""A finished Step's stream re-read from its terminal frame answers 204 (STREAM-2012)."""

from __future__ import annotations

import pathlib
from typing import Any

from litestar.testing import TestClient

from orchestrator_core.config import mock_config
from test_harness.support import app_client, llm_step, parse_sse

SSE = {"Accept": "text/event-stream"}


def _reads(c: TestClient[Any], step_id: str) -> list[tuple[str, int, bytes, str | None]]:
    """Re-read the stream after ids 5, 9 and 4: (id, status, body, content type)."""
    answers = []
    for n in ("5", "9", "4"):
        resp = c.get(f"/v1/steps/{step_id}/stream", headers={"Last-Event-ID": n})
        answers.append((n, resp.status_code, resp.content, resp.headers.get("content-type")))
    return answers


def _finished_step(data: pathlib.Path) -> tuple[str, bytes, list[tuple[str, int, bytes,
                                                                       str | None]]]:
    """Record one 4-token Step to its end; its id, its whole stream, and its re-reads
    while it is still cached."""
    with app_client(mock_config(data_dir=str(data))) as c:
        flow = c.post("/v1/flows", json={"ast_ir": {"end": 1}}).json()["flow_id"]
        run = c.post(f"/v1/flows/{flow}/runs", json={"mode": "record", "seed": 5}).json()
        with c.stream("POST", f"/v1/runs/{run['run_id']}/steps",
                      json=llm_step("end", max_tokens=4), headers=SSE) as resp:
            step_id, whole = resp.headers["x-step-id"], b"".join(resp.iter_bytes())
        return step_id, whole, _reads(c, step_id)


class TestReReadAfterTheEnd:
    """A re-read at or after the terminal frame has no body, so EventSource stops
    [STREAM-2012]."""

    def test_last_event_id_at_or_after_the_terminal_frame_answers_204(
            self, tmp_path: pathlib.Path) -> None:
        """With the Step cached and again after a restart, ``Last-Event-ID`` 5 (the
        ``end`` frame) and 9 answer 204 with an empty body; 4 still gets the ``end``
        frame with 200."""
        step_id, whole, cached = _finished_step(tmp_path / "data")
        frames = parse_sse(whole)
        assert [(f["id"], f["event"]) for f in frames][-1] == (5, "end")
        with app_client(mock_config(data_dir=str(tmp_path / "data"))) as c:
            from_disk = _reads(c, step_id)
        end_block = whole[whole.index(b"id: 5\n"):]
        assert [cached, from_disk] == 2 * [[("5", 204, b"", None), ("9", 204, b"", None),
                               ("4", 200, end_block, "text/event-stream; charset=utf-8")]]

    def test_a_read_from_the_start_replays_the_whole_finished_stream(
            self, tmp_path: pathlib.Path) -> None:
        """Without ``Last-Event-ID`` a finished Step's stream is still 200 and whole."""
        step_id, whole, _cached = _finished_step(tmp_path / "data")
        with app_client(mock_config(data_dir=str(tmp_path / "data"))) as c:
            resp = c.get(f"/v1/steps/{step_id}/stream")
        assert (resp.status_code, resp.content) == (200, whole)
