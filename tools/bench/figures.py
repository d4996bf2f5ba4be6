"""The figures of each bench module: name, unit, direction, value, read from its ``--json``.

``python -m tools.bench --json`` and ``python -m tools.bench.streams --json`` print their
whole report (a :class:`~tools.bench.report.BenchReport` / a
:class:`~tools.bench.streams.StreamsReport`). Both flags and both report shapes already
existed in the tree before the renovation (``49c59d4``), so the figures are declared
once, here, and read out of either tree's report: :mod:`tools.bench.compare` compares
like with like.

A figure is one number the bench prints, oriented by :class:`Direction`. Correctness
checks (identical output, byte-identical replays) are figures too, with unit ``check``
and value 1.0 (held) or 0.0 (broken), higher is better. Figures that are differences of
two figures listed here (``added_p50_ms``, ``+ms/token``, ``streaming share``) are left
out: they can be zero or negative, so a ratio of them means nothing, and their parts
are compared instead.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from enum import StrEnum

import msgspec

from .report import BenchReport
from .streams import StreamsReport

__all__ = [
    "CHECK",
    "MODULES",
    "BenchModule",
    "Direction",
    "Figure",
    "bench_figures",
    "streams_figures",
]

CHECK = "check"
"""The unit of a correctness check (1.0 held, 0.0 broken)."""


class Direction(StrEnum):
    """Which way a figure improves."""

    LOWER = "lower-is-better"
    HIGHER = "higher-is-better"


class Figure(msgspec.Struct, frozen=True):
    """One number a bench printed.

    Attributes:
        name: stable label, unique within its module's report, e.g. ``latency:
            orchestrator p50`` (:func:`tools.bench.table.build_rows` pairs rounds by it).
        unit: ``ms``, ``KiB``, ``µs/token``, ``tok/s``, ``x`` (a ratio), ``check``, ...
        direction: which way is better.
        value: the number, in ``unit``.
    """

    name: str
    unit: str
    direction: Direction
    value: float


def _lower(name: str, unit: str, value: float) -> Figure:
    return Figure(name=name, unit=unit, direction=Direction.LOWER, value=float(value))


def _check(name: str, held: bool) -> Figure:
    return Figure(name=name, unit=CHECK, direction=Direction.HIGHER, value=1.0 if held else 0.0)


def bench_figures(raw: bytes) -> list[Figure]:
    """The figures of one ``python -m tools.bench --json`` report.

    Args:
        raw: the report's JSON bytes.

    Returns:
        Latency (ms, and orchestrator/direct ratios), replay wall times (ms) and ratios,
        the engine paths (ms, ms/token, tok/s), the recordings (ms per 10,000 frames,
        tokens/s) and each observability variant's latency (ms) when measured, and the
        correctness checks (REC-7115).

    Raises:
        msgspec.ValidationError: ``raw`` is not a bench report.
    """
    report = msgspec.json.decode(raw, type=BenchReport)
    lat, rep = report.latency, report.replay
    out = [_lower("latency: orchestrator p50", "ms", lat.orchestrator.p50_ms),
           _lower("latency: orchestrator p99", "ms", lat.orchestrator.p99_ms)]
    if lat.direct is not None and lat.direct_done is not None:
        out += [_lower("latency: direct finish line p50", "ms", lat.direct.p50_ms),
                _lower("latency: direct finish line p99", "ms", lat.direct.p99_ms),
                _lower("latency: direct end of body p50", "ms", lat.direct_done.p50_ms),
                _lower("latency: direct end of body p99", "ms", lat.direct_done.p99_ms)]
    if lat.ratio_p50 is not None and lat.ratio_p99 is not None:
        out += [_lower("latency: orchestrator/direct p50", "x", lat.ratio_p50),
                _lower("latency: orchestrator/direct p99", "x", lat.ratio_p99)]
    out.append(_check("latency: same output on every request", lat.same_output))
    out += [_lower(f"replay: {m.mode} wall", "ms", m.wall_ms) for m in rep.modes]
    out += [_lower("replay: replay/record", "x", rep.replay_over_record),
            _lower("replay: strict_replay/record", "x", rep.strict_replay_over_record),
            _check("replay: replay byte-identical", rep.replay_byte_identical),
            _check("replay: strict_replay byte-identical", rep.strict_replay_byte_identical)]
    eng = report.engines
    if eng is not None:
        for p in eng.paths:
            out += [_lower(f"engines: {p.name} p50 {eng.short} tok", "ms", p.short_p50_ms),
                    _lower(f"engines: {p.name} p50 {eng.long} tok", "ms", p.long_p50_ms),
                    _lower(f"engines: {p.name} decode cost", "ms/token", p.ms_per_token),
                    Figure(name=f"engines: {p.name} decode rate", unit="tok/s",
                           direction=Direction.HIGHER, value=p.tokens_per_s)]
        out += [_check("engines: worker ids = in-process ids", eng.worker_equals_engine),
                _check("engines: old server text = worker bytes", eng.old_server_text_equal)]
    rec = report.recordings
    if rec is not None:
        out += [_lower("recordings: export per 10k frames", "ms", rec.export_ms_per_10k_frames),
                _lower("recordings: import per 10k frames", "ms", rec.import_ms_per_10k_frames),
                Figure(name="recordings: replay of an import", unit="tok/s",
                       direction=Direction.HIGHER, value=float(rec.replay_tokens_per_s)),
                _check("recordings: replay byte-identical", rec.byte_identical)]
    obs = report.observability
    for v in obs.variants if obs is not None else []:
        out += [_lower(f"observability: {v.name} p50", "ms", v.stats.p50_ms),
                _lower(f"observability: {v.name} p99", "ms", v.stats.p99_ms)]
    return out


def streams_figures(raw: bytes) -> list[Figure]:
    """The figures of one ``python -m tools.bench.streams --json`` report.

    Args:
        raw: the report's JSON bytes.

    Returns:
        Server RSS (KiB) with 0 and N subscribers and after, per subscriber and per idle
        connection (KiB), attach time (s), CPU per token with and without readers
        (µs/token) and the median decode rate of each mode's rounds (tokens/s, wall).

    Raises:
        msgspec.ValidationError: ``raw`` is not a streams report.
    """
    report = msgspec.json.decode(raw, type=StreamsReport)
    rss, cpu = report.rss, report.cpu
    out: list[Figure] = []
    if rss is not None:  # absent from a ``--only cpu`` report
        out += [_lower("rss: server, 0 subscribers", "KiB", rss.rss_0_kib),
                _lower(f"rss: server, {rss.subscribers} subscribers", "KiB", rss.rss_n_kib),
                _lower("rss: server, after they left", "KiB", rss.rss_after_kib),
                _lower("rss: per subscriber", "KiB", rss.kib_per_subscriber),
                _lower("rss: per idle connection", "KiB", rss.kib_per_idle_connection),
                _lower(f"rss: {rss.subscribers} subscribers attached in", "s",
                       rss.attach_s)]
    if cpu is None:  # absent from a ``--only rss`` report
        return out
    out += [_lower("cpu: one reader per step", "µs/token", cpu.with_readers_us_per_token),
            _lower("cpu: no reader", "µs/token", cpu.without_readers_us_per_token)]
    for readers, label in ((True, "one reader per step"), (False, "no reader")):
        rates = [c.tokens / c.wall_s for c in cpu.rounds if c.readers is readers and c.wall_s > 0]
        if rates:
            out.append(Figure(name=f"cpu: {label}, wall rate", unit="tok/s",
                              direction=Direction.HIGHER,
                              value=round(statistics.median(rates), 1)))
    return out


class BenchModule(msgspec.Struct, frozen=True):
    """How :mod:`tools.bench.compare` runs one bench module and reads it.

    Attributes:
        figures: reads the module's ``--json`` output.
        quick_args: arguments of a smoke run (``--quick``).
        document_flag: the flag naming the document a run reads, if any; the comparison
            passes both trees the same file, so that both measure the same work.
    """

    figures: Callable[[bytes], list[Figure]]
    quick_args: tuple[str, ...] = ()
    document_flag: str | None = None


MODULES: dict[str, BenchModule] = {
    "tools.bench": BenchModule(
        figures=bench_figures, quick_args=("--mock", "--rounds", "2", "--per-round", "5"),
        document_flag="--file"),
    "tools.bench.streams": BenchModule(
        figures=streams_figures,
        quick_args=("--subscribers", "20", "--streams", "4", "--tokens", "500", "--rounds", "1")),
}
"""Every bench module the comparison knows, by the name ``python -m`` runs."""
