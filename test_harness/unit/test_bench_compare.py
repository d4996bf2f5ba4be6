"""``python -m tools.bench.compare``: figures read from the benches' JSON, ratios oriented so
that > 1.00 is worse, the >5% rule, and the side-by-side table (no timing is measured)."""

from __future__ import annotations

import pathlib

import msgspec
import pytest

from tools.bench.compare import bench_commands, parse_args
from tools.bench.engines import EnginePath, EnginesReport
from tools.bench.figures import Direction, Figure, bench_figures, streams_figures
from tools.bench.latency import LatencyReport, ProbeConfig
from tools.bench.replay import ModeTime, ReplayReport
from tools.bench.report import BenchReport
from tools.bench.stats import PathStats
from tools.bench.streams import CpuReport, CpuRound, RssReport, StreamsReport
from tools.bench.table import (
    Comparison,
    Failure,
    Row,
    Tree,
    build_rows,
    is_worse,
    oriented_ratio,
    regressions,
    render_text,
)

LOWER, HIGHER = Direction.LOWER, Direction.HIGHER


def _ms(name: str, value: float) -> Figure:
    return Figure(name=name, unit="ms", direction=LOWER, value=value)


def _check(name: str, value: float) -> Figure:
    return Figure(name=name, unit="check", direction=HIGHER, value=value)


class TestOrientedRatio:
    """head/base for lower-is-better, base/head for higher-is-better: > 1 is worse."""

    def test_lower_is_better_divides_head_by_base(self) -> None:
        """A latency from 80 ms to 84 ms is 1.05; to 76 ms it is 0.95."""
        assert oriented_ratio(80.0, 84.0, LOWER) == pytest.approx(1.05)
        assert oriented_ratio(80.0, 76.0, LOWER) == pytest.approx(0.95)

    def test_higher_is_better_divides_base_by_head(self) -> None:
        """A rate from 150 to 120 tok/s is 1.25 (worse); to 200 tok/s it is 0.75."""
        assert oriented_ratio(150.0, 120.0, HIGHER) == 1.25
        assert oriented_ratio(150.0, 200.0, HIGHER) == 0.75

    def test_no_ratio_of_a_zero_divisor_or_a_negative_value(self) -> None:
        """Zero divisors and negative values give None, in both directions."""
        assert [oriented_ratio(0.0, 5.0, LOWER), oriented_ratio(5.0, 0.0, HIGHER),
                oriented_ratio(-2.0, 3.0, LOWER), oriented_ratio(3.0, -2.0, LOWER),
                oriented_ratio(-2.0, 3.0, HIGHER)] == [None, None, None, None, None]


class TestIsWorse:
    """A figure is marked when it is worse by more than the threshold, never at it."""

    def test_exactly_five_percent_is_not_worse_and_more_is(self) -> None:
        """100 -> 105 ms passes the 5% rule; 100 -> 105.01 ms does not."""
        assert is_worse(100.0, 105.0, LOWER, 0.05) is False
        assert is_worse(100.0, 105.01, LOWER, 0.05) is True

    def test_a_higher_is_better_figure_is_worse_when_it_falls(self) -> None:
        """A rate falling from 150 to 140 tok/s (1.071) is worse; rising is not."""
        assert is_worse(150.0, 140.0, HIGHER, 0.05) is True
        assert is_worse(150.0, 400.0, HIGHER, 0.05) is False

    def test_a_check_that_broke_is_worse_and_one_that_was_broken_is_not(self) -> None:
        """Held (1) then broken (0) is worse; broken in both, or fixed, is not."""
        assert [is_worse(1.0, 0.0, HIGHER, 0.05), is_worse(0.0, 0.0, HIGHER, 0.05),
                is_worse(0.0, 1.0, HIGHER, 0.05)] == [True, False, False]

    def test_a_cost_of_zero_that_became_positive_is_worse(self) -> None:
        """0 -> 25 µs/token is worse; a negative value is never judged."""
        assert is_worse(0.0, 25.0, LOWER, 0.05) is True
        assert is_worse(-3.0, 25.0, LOWER, 0.05) is False


class TestBuildRows:
    """Rounds pair by figure name; medians per side; a check must hold in every round."""

    def test_median_over_rounds_and_minimum_of_checks(self) -> None:
        """Three rounds a side give the median latency and the worst check."""
        base = [[_ms("p50", 80.0), _check("same", 1.0)], [_ms("p50", 90.0), _check("same", 1.0)],
                [_ms("p50", 81.0), _check("same", 1.0)]]
        head = [[_ms("p50", 84.0), _check("same", 1.0)], [_ms("p50", 83.0), _check("same", 0.0)],
                [_ms("p50", 99.0), _check("same", 1.0)]]
        assert build_rows("tools.bench", base, head, 0.05) == [
            Row(module="tools.bench", name="p50", unit="ms", direction=LOWER, base=81.0,
                head=84.0, ratio=1.037, worse=False, base_rounds=[80.0, 90.0, 81.0],
                head_rounds=[84.0, 83.0, 99.0]),
            Row(module="tools.bench", name="same", unit="check", direction=HIGHER, base=1.0,
                head=0.0, ratio=None, worse=True, base_rounds=[1.0, 1.0, 1.0],
                head_rounds=[1.0, 0.0, 1.0]),
        ]

    def test_two_figures_of_one_name_in_a_run_are_refused(self) -> None:
        """Rounds pair by name, so one run naming a figure twice is an error, not a merge."""
        run = [Figure(name="decode", unit="ms/token", direction=LOWER, value=6.75),
               Figure(name="decode", unit="tok/s", direction=HIGHER, value=148.2)]
        with pytest.raises(ValueError, match="a figure name appears twice in one run"):
            build_rows("tools.bench", [run], [run], 0.05)

    def test_a_figure_one_side_lacks_is_listed_but_not_judged(self) -> None:
        """A figure only the head printed gets no base value, no ratio and no mark."""
        rows = build_rows("m", [[_ms("a", 1.0)]], [[_ms("a", 1.0), _ms("new", 9.0)]], 0.05)
        assert rows[1] == Row(module="m", name="new", unit="ms", direction=LOWER, base=None,
                              head=9.0, ratio=None, worse=False, base_rounds=[],
                              head_rounds=[9.0])


def _comparison(rows: list[Row], failures: list[Failure] | None = None) -> Comparison:
    base = Tree(side="base", rev="49c59d4", commit="49c59d4", path="/scratch/c/base",
                imports={"orchestrator_core": "/scratch/c/base/orchestrator_core/__init__.py"})
    head = Tree(side="head", rev="working tree", commit="ca368dd+dirty", path="/w",
                imports={"orchestrator_core": "/w/orchestrator_core/__init__.py"})
    return Comparison(base=base, head=head, rounds=3, threshold=0.05,
                      commands={"tools.bench": ["--mock", "--file", "/scratch/c/document.md"]},
                      rows=rows, worse=regressions(rows, failures or []),
                      failures=failures or [])


class TestRenderText:
    """The table names both trees, where each imported its core from, and marks regressions."""

    def test_table_with_one_regression(self) -> None:
        """Ratios to 3 places, checks as yes/NO, n/a without a ratio, WORSE on the mark."""
        rows = [*build_rows("tools.bench",
                            [[_ms("latency: orchestrator p50", 80.0), _check("same", 1.0),
                              Figure(name="decode", unit="tok/s", direction=HIGHER,
                                     value=150.0)]],
                            [[_ms("latency: orchestrator p50", 88.0), _check("same", 1.0),
                              Figure(name="decode", unit="tok/s", direction=HIGHER,
                                     value=151.0)]], 0.05),
                *build_rows("tools.bench.streams",
                            [[Figure(name="cpu", unit="µs/token", direction=LOWER, value=0.0)]],
                            [[Figure(name="cpu", unit="µs/token", direction=LOWER, value=0.0)]],
                            0.05)]
        assert render_text(_comparison(rows)) == "\n".join([
            "orchestratord bench comparison: median of 3 interleaved round(s) per side "
            "(base, head, base, head, ...)",
            "  base  49c59d4 = 49c59d4: /scratch/c/base",
            "        orchestrator_core from /scratch/c/base/orchestrator_core/__init__.py",
            "  head  working tree = ca368dd+dirty: /w",
            "        orchestrator_core from /w/orchestrator_core/__init__.py",
            "  python -m tools.bench --json --mock --file /scratch/c/document.md",
            "",
            "figure                                             unit        base        head"
            "  head/base  mark",
            "[tools.bench]",
            "  latency: orchestrator p50                          ms       80.00       88.00"
            "      1.100  WORSE (> 5%)",
            "  same                                            check         yes         yes"
            "      1.000",
            "  decode                                          tok/s      150.00      151.00"
            "      0.993",
            "[tools.bench.streams]",
            "  cpu                                          µs/token      0.0000      0.0000"
            "        n/a",
            "",
            "head/base is oriented so that > 1.00 is worse (base/head for higher-is-better "
            "figures); 1 regression(s) (worse by more than 5%, or a failed head run)",
            "  tools.bench: latency: orchestrator p50",
        ])

    def test_failed_runs_are_listed_and_a_failed_head_run_is_a_regression(self) -> None:
        """A base failure is listed only; a head failure is listed and counted."""
        rows = build_rows("tools.bench", [[_ms("p50", 80.0)]], [[_ms("p50", 80.0)]], 0.05)
        failures = [Failure(round=1, module="tools.bench", side="base", message="exited 2"),
                    Failure(round=2, module="tools.bench", side="head",
                            message="exited 1 with no report (Input data was truncated)")]
        assert render_text(_comparison(rows, failures)).split("\n")[-5:] == [
            "",
            "failed and run again: round 1, tools.bench on base: exited 2",
            "failed and run again: round 2, tools.bench on head: exited 1 with no report "
            "(Input data was truncated)",
            "head/base is oriented so that > 1.00 is worse (base/head for higher-is-better "
            "figures); 1 regression(s) (worse by more than 5%, or a failed head run)",
            "  tools.bench: a failed head run in round 2",
        ]


def _stats(p50: float, p99: float) -> PathStats:
    return PathStats(p50_ms=p50, p99_ms=p99, round_medians_ms=[p50], samples_ms=[[p50]])


class TestFigures:
    """Each bench's --json report is read into named, oriented figures."""

    def test_mock_bench_report(self) -> None:
        """A mock-engine report: orchestrator latency, replay times and ratios, checks."""
        modes = [ModeTime(mode=m, steps=8, tokens=61, wall_ms=w, engine_requests=3)
                 for m, w in (("record", 120.0), ("replay", 40.0), ("strict_replay", 39.0))]
        report = BenchReport(
            server_url="http://127.0.0.1:1", server_started=True, engine="mock",
            latency=LatencyReport(model="mock:echo-1", replica_url=None, run_id="run_1",
                                  config=ProbeConfig(), text="x", tokens=8, same_output=True,
                                  orchestrator=_stats(2.9, 3.1)),
            replay=ReplayReport(document="d.md", modes=modes, replay_over_record=0.3333,
                                strict_replay_over_record=0.325, replay_byte_identical=True,
                                strict_replay_byte_identical=False))
        assert bench_figures(msgspec.json.encode(report)) == [
            _ms("latency: orchestrator p50", 2.9), _ms("latency: orchestrator p99", 3.1),
            _check("latency: same output on every request", 1.0),
            _ms("replay: record wall", 120.0), _ms("replay: replay wall", 40.0),
            _ms("replay: strict_replay wall", 39.0),
            Figure(name="replay: replay/record", unit="x", direction=LOWER, value=0.3333),
            Figure(name="replay: strict_replay/record", unit="x", direction=LOWER,
                   value=0.325),
            _check("replay: replay byte-identical", 1.0),
            _check("replay: strict_replay byte-identical", 0.0),
        ]

    def test_engine_paths_and_direct_latency_of_a_real_engine_report(self) -> None:
        """With a replica: direct latency and ratios, and per engine path ms, ms/token, tok/s."""
        modes = [ModeTime(mode=m, steps=8, tokens=191, wall_ms=w, engine_requests=3)
                 for m, w in (("record", 5900.0), ("replay", 38.0), ("strict_replay", 5700.0))]
        path = EnginePath(name="worker", short_p50_ms=119.4, long_p50_ms=497.4, short_tokens=8,
                          long_tokens=64, ms_per_token=6.75, tokens_per_s=148.2,
                          overhead_ms_per_token=-0.13, step_overhead_ms=0.642)
        report = BenchReport(
            server_url="http://127.0.0.1:1", server_started=True, engine="llama.cpp",
            latency=LatencyReport(model="m", replica_url="http://127.0.0.1:2", run_id="run_1",
                                  config=ProbeConfig(), text="x", tokens=8, same_output=True,
                                  orchestrator=_stats(83.0, 95.0), direct=_stats(76.0, 90.0),
                                  direct_done=_stats(76.5, 90.5), added_p50_ms=7.0,
                                  added_p99_ms=5.0, ratio_p50=1.0921, ratio_p99=1.0556),
            replay=ReplayReport(document="d.md", modes=modes, replay_over_record=0.0064,
                                strict_replay_over_record=0.9661, replay_byte_identical=True,
                                strict_replay_byte_identical=True),
            engines=EnginesReport(short=8, long=64, requests=15, paths=[path],
                                  worker_equals_engine=True, old_server_text_equal=False))
        figures = bench_figures(msgspec.json.encode(report))
        assert [(f.name, f.unit, f.direction.value, f.value) for f in figures] == [
            ("latency: orchestrator p50", "ms", "lower-is-better", 83.0),
            ("latency: orchestrator p99", "ms", "lower-is-better", 95.0),
            ("latency: direct finish line p50", "ms", "lower-is-better", 76.0),
            ("latency: direct finish line p99", "ms", "lower-is-better", 90.0),
            ("latency: direct end of body p50", "ms", "lower-is-better", 76.5),
            ("latency: direct end of body p99", "ms", "lower-is-better", 90.5),
            ("latency: orchestrator/direct p50", "x", "lower-is-better", 1.0921),
            ("latency: orchestrator/direct p99", "x", "lower-is-better", 1.0556),
            ("latency: same output on every request", "check", "higher-is-better", 1.0),
            ("replay: record wall", "ms", "lower-is-better", 5900.0),
            ("replay: replay wall", "ms", "lower-is-better", 38.0),
            ("replay: strict_replay wall", "ms", "lower-is-better", 5700.0),
            ("replay: replay/record", "x", "lower-is-better", 0.0064),
            ("replay: strict_replay/record", "x", "lower-is-better", 0.9661),
            ("replay: replay byte-identical", "check", "higher-is-better", 1.0),
            ("replay: strict_replay byte-identical", "check", "higher-is-better", 1.0),
            ("engines: worker p50 8 tok", "ms", "lower-is-better", 119.4),
            ("engines: worker p50 64 tok", "ms", "lower-is-better", 497.4),
            ("engines: worker decode cost", "ms/token", "lower-is-better", 6.75),
            ("engines: worker decode rate", "tok/s", "higher-is-better", 148.2),
            ("engines: worker ids = in-process ids", "check", "higher-is-better", 1.0),
            ("engines: old server text = worker bytes", "check", "higher-is-better", 0.0),
        ]

    def test_streams_report(self) -> None:
        """RSS (KiB), attach time (s), CPU per token (µs) and median wall rates (tok/s)."""
        rounds = [CpuRound(readers=r, tokens=32000, cpu_s=0.35, wall_s=w, us_per_token=10.9)
                  for r, w in ((True, 0.4), (False, 0.32), (False, 0.5), (True, 0.2),
                               (True, 0.25))]
        report = StreamsReport(
            cpus=2,
            rss=RssReport(subscribers=500, tokens_per_s=5.0, rss_0_kib=85580, rss_n_kib=106564,
                          rss_after_kib=106692, kib_per_subscriber=41.97, attach_s=0.282,
                          kib_per_idle_connection=35.24),
            cpu=CpuReport(streams=16, tokens_per_step=2000, clock_tick_s=0.01,
                          with_readers_us_per_token=10.938, without_readers_us_per_token=10.312,
                          streaming_us_per_token=0.626, rounds=rounds))
        kib = [("rss: server, 0 subscribers", 85580.0), ("rss: server, 500 subscribers", 106564.0),
               ("rss: server, after they left", 106692.0), ("rss: per subscriber", 41.97),
               ("rss: per idle connection", 35.24)]
        assert streams_figures(msgspec.json.encode(report)) == [
            *(Figure(name=n, unit="KiB", direction=LOWER, value=v) for n, v in kib),
            Figure(name="rss: 500 subscribers attached in", unit="s", direction=LOWER,
                   value=0.282),
            Figure(name="cpu: one reader per step", unit="µs/token", direction=LOWER,
                   value=10.938),
            Figure(name="cpu: no reader", unit="µs/token", direction=LOWER, value=10.312),
            Figure(name="cpu: one reader per step, wall rate", unit="tok/s",
                   direction=HIGHER, value=128000.0),
            Figure(name="cpu: no reader, wall rate", unit="tok/s", direction=HIGHER,
                   value=82000.0),
        ]


class TestCommands:
    """What each bench is run with."""

    def test_quick_settings_and_one_document_for_both_trees(self) -> None:
        """--quick gives one round and small loads; tools.bench reads the pinned document."""
        args = parse_args(["--quick", "--args", "tools.bench=--per-round 7"])
        assert args.rounds == 1
        assert bench_commands(args, pathlib.Path("/scratch/c/document.md")) == {
            "tools.bench": ["--mock", "--rounds", "2", "--per-round", "5", "--per-round", "7",
                            "--file", "/scratch/c/document.md"],
            "tools.bench.streams": ["--subscribers", "20", "--streams", "4", "--tokens", "500",
                                    "--rounds", "1"],
        }

    def test_defaults(self) -> None:
        """Base 49c59d4, head the working tree, both modules, three rounds, 5%."""
        args = parse_args([])
        assert (args.base, args.head, args.modules, args.rounds, args.threshold) == \
            ("49c59d4", None, ["tools.bench", "tools.bench.streams"], 3, 0.05)
