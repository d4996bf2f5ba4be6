"""``python -m tools.bench.recordings``: export, import and replay from an imported
recording, measured (REC-7012)."""

from __future__ import annotations

import msgspec
import pytest

from tools.bench.recordings import RecordingsReport, main, measure


class TestRecordingsBench:
    """The bench's figures come from a byte-identical replay on a server with no engine."""

    def test_a_small_round_is_byte_identical_and_measured(self) -> None:
        """[REC-7012] One round of 2 Steps of 20 tokens: 44 frames, every replayed body
        equal to its recording, and positive rates."""
        report = measure(steps=2, tokens=20, rounds=1)
        assert (report.steps, report.tokens, report.frames, report.byte_identical,
                report.engine_requests) == (2, 40, 44, True, 0)
        assert min(report.export_ms_per_10k_frames, report.import_ms_per_10k_frames,
                   report.replay_tokens_per_s) > 0

    def test_json_output_is_the_report_alone(self, capfd: pytest.CaptureFixture[str]) -> None:
        """[REC-7115] With ``--json`` the standard output is one JSON report: the embedded
        servers' log lines go to stderr."""
        assert main(["--json", "--steps", "1", "--tokens", "5", "--rounds", "1"]) == 0
        out = capfd.readouterr().out
        report = msgspec.json.decode(out, type=RecordingsReport)
        assert (out.count("\n"), report.steps, report.tokens, report.byte_identical) == (
            1, 1, 5, True)
