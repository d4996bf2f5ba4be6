"""``python -m tools.bench`` measures the recordings and observability too, and the
comparison reads their figures (REC-7115)."""

from __future__ import annotations

import msgspec

from tools.bench.cli import parse_args
from tools.bench.figures import Direction, Figure, bench_figures
from tools.bench.latency import LatencyReport, ProbeConfig
from tools.bench.observability import ObservabilityReport, VariantResult
from tools.bench.recordings import RecordingsReport
from tools.bench.replay import ModeTime, ReplayReport
from tools.bench.report import BenchReport, render_text
from tools.bench.stats import PathStats

LOWER, HIGHER = Direction.LOWER, Direction.HIGHER


def _stats(p50: float, p99: float) -> PathStats:
    return PathStats(p50_ms=p50, p99_ms=p99, round_medians_ms=[p50], samples_ms=[[p50]])


def _report() -> BenchReport:
    modes = [ModeTime(mode=m, steps=8, tokens=61, wall_ms=w, engine_requests=0)
             for m, w in (("record", 120.0), ("replay", 40.0), ("strict_replay", 39.0))]
    return BenchReport(
        server_url="http://127.0.0.1:1", server_started=True, engine="mock",
        latency=LatencyReport(model="mock:echo-1", replica_url=None, run_id="run_1",
                              config=ProbeConfig(), text="x", tokens=8, same_output=True,
                              orchestrator=_stats(2.9, 3.1)),
        replay=ReplayReport(document="d.md", modes=modes, replay_over_record=0.3333,
                            strict_replay_over_record=0.325, replay_byte_identical=True,
                            strict_replay_byte_identical=True),
        recordings=RecordingsReport(steps=3, tokens=10200, frames=10212,
                                    export_ms_per_10k_frames=61.5,
                                    import_ms_per_10k_frames=240.2,
                                    replay_tokens_per_s=51000, byte_identical=True),
        observability=ObservabilityReport(rounds=2, per_round=5, max_tokens=8, variants=[
            VariantResult(name="off", stats=_stats(3.0, 4.0), added_p50_ms=0.0,
                          added_p99_ms=0.0),
            VariantResult(name="logs+traces", stats=_stats(3.5, 5.0), added_p50_ms=0.5,
                          added_p99_ms=1.0)]))


class TestBenchSuite:
    """Measurements 3 and 4 of ``python -m tools.bench``."""

    def test_the_recordings_and_observability_figures_are_read_from_the_report(
            self) -> None:
        """[REC-7115] After the latency and replay figures come the recordings' export
        and import time per 10,000 frames, the replay throughput of an import (tokens/s,
        higher is better) and its check, then each observability variant's p50 and p99."""
        figures = bench_figures(msgspec.json.encode(_report()))
        assert figures[10:] == [
            Figure(name="recordings: export per 10k frames", unit="ms", direction=LOWER,
                   value=61.5),
            Figure(name="recordings: import per 10k frames", unit="ms", direction=LOWER,
                   value=240.2),
            Figure(name="recordings: replay of an import", unit="tok/s", direction=HIGHER,
                   value=51000.0),
            Figure(name="recordings: replay byte-identical", unit="check", direction=HIGHER,
                   value=1.0),
            Figure(name="observability: off p50", unit="ms", direction=LOWER, value=3.0),
            Figure(name="observability: off p99", unit="ms", direction=LOWER, value=4.0),
            Figure(name="observability: logs+traces p50", unit="ms", direction=LOWER,
                   value=3.5),
            Figure(name="observability: logs+traces p99", unit="ms", direction=LOWER,
                   value=5.0),
        ]

    def test_the_text_report_prints_measurements_3_and_4(self) -> None:
        """[REC-7115] The text report ends with the recordings' lines and the
        observability table."""
        tail = render_text(_report()).split("\n")[-12:]
        assert tail == [
            "3) recordings  (3 llm_call steps, 10200 tokens, 10212 frames a run; mock engine "
            "to record, a server with no engine to import and replay)",
            "",
            "   export                        61.5 ms per 10,000 frames",
            "   import                       240.2 ms per 10,000 frames",
            "   replay of the import         51000 tokens/s to the client",
            "   replayed bodies byte-identical to the recording: yes; engine requests: 0",
            "",
            "4) latency per llm_call (submit to end frame, one round trip, mock engine, 8 "
            "tokens): 2 rounds x 5 requests per server, alternating",
            "",
            "   server                     p50 ms   p99 ms   +p50 ms   +p99 ms",
            "   off                         3.000    4.000     0.000     0.000",
            "   logs+traces                 3.500    5.000     0.500     1.000",
        ]

    def test_both_measurements_run_unless_skipped(self) -> None:
        """[REC-7115] By default both run; ``--no-recordings`` and ``--no-observability``
        skip them."""
        default, skipped = parse_args([]), parse_args(["--no-recordings",
                                                       "--no-observability"])
        assert (default.no_recordings, default.no_observability) == (False, False)
        assert (skipped.no_recordings, skipped.no_observability) == (True, True)
