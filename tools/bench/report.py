"""Text and JSON rendering of the bench results (times in ms)."""

from __future__ import annotations

import msgspec

from .engines import EnginesReport
from .latency import LatencyReport
from .observability import ObservabilityReport
from .observability import render_text as observability_text
from .recordings import RecordingsReport
from .replay import ReplayReport

__all__ = ["BenchReport", "render_json", "render_text"]

_NA = "n/a"


class BenchReport(msgspec.Struct, frozen=True):
    """Everything one bench run measured.

    Attributes:
        server_url: the server under test.
        server_started: True when the bench started (and stopped) the server itself.
        engine: ``mock`` or ``llamacpp``/remote, as the pool reports it.
        latency: measurement 1, added latency (ms).
        replay: measurement 2, replay time / record time.
        engines: measurement 0, the engine paths side by side (None with the mock or
            ``--no-engines``).
        recordings: measurement 3, export and import time per 10,000 frames and replay
            throughput from an imported recording (None with ``--no-recordings``;
            REC-7115).
        observability: measurement 4, what logs and traces add to an ``llm_call`` (None
            with ``--no-observability``; REC-7115).
    """

    server_url: str
    server_started: bool
    engine: str
    latency: LatencyReport
    replay: ReplayReport
    engines: EnginesReport | None = None
    recordings: RecordingsReport | None = None
    observability: ObservabilityReport | None = None


def render_json(report: BenchReport) -> str:
    """Pretty-printed JSON of the whole report."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2).decode()


def _ms(v: float | None) -> str:
    return f"{v:10.3f}" if v is not None else f"{'n/a':>10}"


def _latency_lines(lat: LatencyReport) -> list[str]:
    cfg = lat.config
    n = cfg.rounds * cfg.per_round
    yes = "yes" if lat.same_output else "NO"
    lines = [
        f"1) added latency of an llm_call step  (model {lat.model}, run {lat.run_id})",
        f"   probe: raw prompt {cfg.prompt!r}, max_tokens {cfg.max_tokens}, seed {cfg.seed}, "
        "temperature 0",
        f"   {cfg.rounds} rounds x {cfg.per_round} requests per path, alternating "
        "orchestrator/direct, after 1 warm-up each",
        f"   output: {lat.tokens} tokens {lat.text!r}; identical on every request: {yes}",
        "",
        f"   {'path':<56}{'p50 ms':>10}{'p99 ms':>10}",
        f"   {'orchestrator: POST /v1/runs/{id}/steps -> end SSE frame':<56}"
        f"{_ms(lat.orchestrator.p50_ms)}{_ms(lat.orchestrator.p99_ms)}",
        f"   {'  (one round trip: Accept: text/event-stream)':<56}",
    ]
    if lat.orchestrator_two_trips is not None:
        two = lat.orchestrator_two_trips
        lines.append(f"   {'orchestrator, two round trips: POST, then GET stream':<56}"
                     f"{_ms(two.p50_ms)}{_ms(two.p99_ms)}")
    if lat.direct is None or lat.direct_done is None:
        lines += [f"   {'direct engine':<56}{_NA}",
                  f"   {'added (orchestrator - direct)':<56}{_NA}"]
    elif lat.direct_kind != "engine":
        lines += [
            f"   {'direct: the mock handler iterated in the bench process':<56}"
            f"{_ms(lat.direct.p50_ms)}{_ms(lat.direct.p99_ms)}",
            f"   {'added (orchestrator - direct), ms':<56}"
            f"{_ms(lat.added_p50_ms)}{_ms(lat.added_p99_ms)}",
        ]
    else:
        lines += [
            f"   {'direct: POST ' + str(lat.replica_url) + '/v1/generate':<56}",
            f"   {'        -> finish line':<56}"
            f"{_ms(lat.direct.p50_ms)}{_ms(lat.direct.p99_ms)}",
            f"   {'        -> end of body':<56}"
            f"{_ms(lat.direct_done.p50_ms)}{_ms(lat.direct_done.p99_ms)}",
            f"   {'added (orchestrator - direct finish line), ms':<56}"
            f"{_ms(lat.added_p50_ms)}{_ms(lat.added_p99_ms)}",
            f"   {'ratio (orchestrator / direct finish line)':<56}"
            f"{lat.ratio_p50:9.3f}x{lat.ratio_p99:9.3f}x",
        ]
    lines.append(f"   p50 = median of the {cfg.rounds} per-round medians; "
                 f"p99 = nearest rank over all {n} samples of a path")
    lines.append("   per-round medians, orchestrator (ms): "
                 + ", ".join(f"{m:.1f}" for m in lat.orchestrator.round_medians_ms))
    if lat.direct is not None:
        lines.append("   per-round medians, direct (ms):       "
                     + ", ".join(f"{m:.1f}" for m in lat.direct.round_medians_ms))
    return lines


def _engine_lines(eng: EnginesReport) -> list[str]:
    yes = {True: "yes", False: "NO"}
    lines = [
        f"0) engine paths: {eng.short}- and {eng.long}-token completions, {eng.requests} "
        "requests per path and length, alternating",
        "",
        f"   {'path':<22}{f'p50 {eng.short} tok':>12}{f'p50 {eng.long} tok':>12}"
        f"{'ms/token':>10}{'tok/s':>8}{'+ms/token':>11}{'+ms/step':>10}",
    ]
    for p in eng.paths:
        lines.append(f"   {p.name:<22}{p.short_p50_ms:>12.2f}{p.long_p50_ms:>12.2f}"
                     f"{p.ms_per_token:>10.3f}{p.tokens_per_s:>8.1f}"
                     f"{p.overhead_ms_per_token:>11.3f}{p.step_overhead_ms:>10.2f}")
    lines += [
        "   +ms/token and +ms/step: over the in-process engine "
        "(tokens: " + ", ".join(f"{p.name} {p.short_tokens}/{p.long_tokens}"
                                for p in eng.paths) + ")",
        f"   worker token ids = in-process engine's: {yes[eng.worker_equals_engine]}; "
        f"old server text = worker bytes: {yes[eng.old_server_text_equal]}",
    ]
    return lines


def _replay_lines(rep: ReplayReport) -> list[str]:
    record_ms = rep.modes[0].wall_ms
    lines = [
        f"2) replay time / record time  (demo flow, 3 llm_call steps, document {rep.document})",
        "",
        f"   {'mode':<15}{'steps':>6}{'tokens':>8}{'wall ms':>11}{'engine reqs':>13}"
        f"{'/ record':>10}",
    ]
    for m in rep.modes:
        lines.append(f"   {m.mode:<15}{m.steps:>6}{m.tokens:>8}{m.wall_ms:>11.1f}"
                     f"{m.engine_requests:>13}{m.wall_ms / record_ms:>10.4f}")
    yes = {True: "yes", False: "NO"}
    lines += [
        "",
        f"   replay / record        = {rep.replay_over_record:.4f}",
        f"   strict_replay / record = {rep.strict_replay_over_record:.4f}",
        f"   token streams byte-identical to record: replay "
        f"{yes[rep.replay_byte_identical]}, strict_replay "
        f"{yes[rep.strict_replay_byte_identical]}",
    ]
    return lines


def _recordings_lines(rec: RecordingsReport) -> list[str]:
    yes = {True: "yes", False: "NO"}
    return [
        f"3) recordings  ({rec.steps} llm_call steps, {rec.tokens} tokens, {rec.frames} frames "
        "a run; mock engine to record, a server with no engine to import and replay)",
        "",
        f"   export                  {rec.export_ms_per_10k_frames:>10.1f} ms per 10,000 frames",
        f"   import                  {rec.import_ms_per_10k_frames:>10.1f} ms per 10,000 frames",
        f"   replay of the import    {rec.replay_tokens_per_s:>10.0f} tokens/s to the client",
        f"   replayed bodies byte-identical to the recording: {yes[rec.byte_identical]}; "
        f"engine requests: {rec.engine_requests}",
    ]


def render_text(report: BenchReport) -> str:
    """Human-readable report: every measurement, one after the other."""
    how = "started by the bench" if report.server_started else "already running"
    head = [f"orchestratord bench: server {report.server_url} ({how}), "
            f"engine {report.engine}", ""]
    engines = [*_engine_lines(report.engines), ""] if report.engines is not None else []
    lines = [*head, *engines, *_latency_lines(report.latency), "",
             *_replay_lines(report.replay)]
    if report.recordings is not None:
        lines += ["", *_recordings_lines(report.recordings)]
    if report.observability is not None:
        lines += ["", "4) " + observability_text(report.observability)]
    return "\n".join(line.rstrip() for line in lines)
