"""Replay against record, and replay against reading the recording back.

Two measurements:

* :func:`measure_replay` (part of ``python -m tools.bench``): the demo flow (three
  ``llm_call`` Steps) through :func:`tools.demo.run_flow_modes`, which records the flow,
  replays it and strict-replays it, timing each mode from its first Step submission to
  its last ``end`` frame.
* ``python -m tools.bench.replay [--steps 20] [--tokens 200] [--rounds 3]
  [--engine-tokens-per-s 0] [--json]`` (:func:`measure_readback`): on a ``orchestratord``
  Granian process of its own whose mock engine answers exactly ``max_tokens`` tokens, as
  fast as it can or paced at ``--engine-tokens-per-s`` per Step (e.g. 2000, a
  CPU engine's speed, for the replay / record a user sees), each round records
  a Run of S Steps of T tokens, replays it, and reads the recorded Steps' streams back,
  one Step after the other as an interpreter does; replay and read-back alternate which
  goes first. It prints, side by side: record, replay and read-back wall times; replay /
  record (target <= 0.2); replay tokens/s against plain read-back tokens/s (target >=
  80%); the server's CPU per token in each phase (every thread's ``schedstat``); and
  whether every replayed stream body is byte-identical to the recording's (NERVE-4025).
  Every round runs twice, once with each client of :mod:`tools.bench.replay_clients`
  (all three arms of a round use the same client): a raw keep-alive HTTP/1.1 client
  (the headline: its cost per request is a few tens of µs) and httpx (the measure this
  bench printed before, kept next to it: httpx spends 0.5 to 0.75 ms of CPU per
  request on 2 shared cores, as much as the server's work for a replayed Step).
  A record or replay Step is ``POST /v1/runs/{id}/steps`` sent with ``Accept:
  text/event-stream``: when the server answers with the stream, that is the Step's one
  request; otherwise ``GET /v1/steps/{id}/stream`` follows (the report says which).
  Read-back is the ``GET`` alone. Bodies are read raw (no SSE parsing), so the figures
  are the server's and HTTP's, not a client parser's. Medians over rounds are reported,
  per client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

import msgspec

from orchestratord.client import OrchestratorClient
from tools.bench.replay_clients import BenchClient, HttpxClient, RawClient
from tools.demo import run_flow_modes

__all__ = ["ModeTime", "ReadbackReport", "ReadbackRound", "ReplayReport", "default_document",
           "main", "measure_readback", "measure_replay", "parse_args", "render_readback"]

_DOCUMENT_CHARS = 1500  # as ``python -m tools.demo`` does


class ModeTime(msgspec.Struct, frozen=True):
    """One mode of the flow.

    Attributes:
        mode: ``record``, ``replay`` or ``strict_replay``.
        steps: Steps run.
        tokens: token frames streamed over all Steps.
        wall_ms: first submission to last ``end`` frame (ms).
        engine_requests: engine requests the server counted during the mode.
    """

    mode: str
    steps: int
    tokens: int
    wall_ms: float
    engine_requests: int


class ReplayReport(msgspec.Struct, frozen=True):
    """Result of :func:`measure_replay`.

    Attributes:
        document: the file whose first 1500 characters the flow summarises.
        modes: record, replay, strict_replay, in that order.
        replay_over_record: replay wall_ms / record wall_ms.
        strict_replay_over_record: strict_replay wall_ms / record wall_ms.
        replay_byte_identical: replay's token stream equals record's.
        strict_replay_byte_identical: strict_replay's token stream equals record's.
    """

    document: str
    modes: list[ModeTime]
    replay_over_record: float
    strict_replay_over_record: float
    replay_byte_identical: bool
    strict_replay_byte_identical: bool


def default_document() -> pathlib.Path:
    """The file ``python -m tools.demo`` summarises by default (same search order)."""
    for candidate in (pathlib.Path("specs/20_stream_and_replay.md"), pathlib.Path("README.md")):
        if candidate.is_file():
            return candidate
    import tools.demo as demo

    return pathlib.Path(demo.__file__)


async def measure_replay(client: OrchestratorClient, document: pathlib.Path,
                         text: str) -> ReplayReport:
    """Record, replay and strict-replay the demo flow and compare their times.

    Args:
        client: connected to the server under test.
        document: the file ``text`` was read from (reported only).
        text: the file's content; its first 1500 characters are summarised.

    Returns:
        Each mode's wall time (ms) and the ratios to the record time.
    """
    raw = await run_flow_modes(client, text[:_DOCUMENT_CHARS])
    modes = [ModeTime(mode=str(m["mode"]), steps=int(m["steps"]), tokens=int(m["tokens"]),
                      wall_ms=float(m["wall_ms"]), engine_requests=int(m["engine_requests"]))
             for m in raw["modes"]]
    by_mode = {m.mode: m.wall_ms for m in modes}
    return ReplayReport(
        document=str(document), modes=modes,
        replay_over_record=round(by_mode["replay"] / by_mode["record"], 4),
        strict_replay_over_record=round(by_mode["strict_replay"] / by_mode["record"], 4),
        replay_byte_identical=bool(raw["replay_byte_identical"]),
        strict_replay_byte_identical=bool(raw["strict_replay_byte_identical"]),
    )


# -- replay against read-back (python -m tools.bench.replay) ---------------------------

_TARGET_REPLAY_OVER_RECORD = 0.2
_TARGET_RATE_SHARE = 0.8
_SSE = "text/event-stream"


class ReadbackRound(msgspec.Struct, frozen=True):
    """One round: a Run recorded, replayed and read back.

    Attributes:
        record_ms: the S Steps recorded, one after the other (ms).
        replay_ms: the S Steps of a replay Run, one after the other (ms).
        readback_ms: the S recorded Steps' streams read again (ms).
        record_cpu_ms: server CPU time while recording (ms, every thread).
        replay_cpu_ms: server CPU time while replaying (ms).
        readback_cpu_ms: server CPU time while reading back (ms).
        replay_first: replay ran before the read-back in this round.
        byte_identical: every replayed body equals the recorded Step's read-back body,
            and each holds T token frames.
        resubmit_ms: the replay Run's S Steps submitted again, the same bodies with the
            same ``Accept``: each ``POST`` answered with the Step's stream and nothing
            admitted (NERVE-4003), the floor of any replay answered to a ``POST`` (ms).
        resubmit_cpu_ms: server CPU time while resubmitting (ms).
    """

    record_ms: float
    replay_ms: float
    readback_ms: float
    record_cpu_ms: float
    replay_cpu_ms: float
    readback_cpu_ms: float
    replay_first: bool
    byte_identical: bool
    resubmit_ms: float = 0.0
    resubmit_cpu_ms: float = 0.0


class ReadbackReport(msgspec.Struct, frozen=True):
    """Replay against record and against plain read-back (medians over rounds).

    Attributes:
        client: the HTTP client every arm used: ``raw`` (a hand-written keep-alive
            HTTP/1.1 client, the headline) or ``httpx`` (the earlier measure).
        cpus: CPUs online (the server and this client share them).
        steps: S, Steps per Run.
        tokens_per_step: T, token frames per Step.
        round_trips_per_step: HTTP requests a record or replay Step took: 1 when the
            server answered the ``POST`` (sent with ``Accept: text/event-stream``) with
            the stream itself, else 2 (``POST`` then ``GET .../stream``).
        record_ms: median record wall time of S Steps (ms).
        replay_ms: median replay wall time of S Steps (ms).
        readback_ms: median read-back wall time of S Steps (ms).
        replay_over_record: ``replay_ms / record_ms``.
        replay_tokens_per_s: ``S * T / replay_ms`` (tokens/s).
        readback_tokens_per_s: ``S * T / readback_ms`` (tokens/s).
        replay_share_of_readback: ``replay_tokens_per_s / readback_tokens_per_s``.
        record_server_us_per_token: median server CPU per token while recording (µs).
        replay_server_us_per_token: median server CPU per token while replaying (µs).
        readback_server_us_per_token: median server CPU per token while reading back (µs).
        replay_over_record_server_cpu: ``replay_cpu / record_cpu`` (medians).
        byte_identical: every round's replayed bodies equal the recording's.
        rounds: every round, in the order run.
        target_replay_over_record: the goal, at most.
        target_replay_share_of_readback: the goal, at least.
        engine_tokens_per_s: the mock engine's pace per Step (tokens/s; 0: unpaced).
        resubmit_ms: median wall time of the S idempotent resubmissions (ms).
        resubmit_share_of_readback: their tokens/s against read-back's: what a replay
            answered to a ``POST`` could reach if admitting it cost nothing.
    """

    client: str
    cpus: int
    steps: int
    tokens_per_step: int
    round_trips_per_step: int
    record_ms: float
    replay_ms: float
    readback_ms: float
    replay_over_record: float
    replay_tokens_per_s: float
    readback_tokens_per_s: float
    replay_share_of_readback: float
    record_server_us_per_token: float
    replay_server_us_per_token: float
    readback_server_us_per_token: float
    replay_over_record_server_cpu: float
    byte_identical: bool
    rounds: list[ReadbackRound]
    target_replay_over_record: float = _TARGET_REPLAY_OVER_RECORD
    target_replay_share_of_readback: float = _TARGET_RATE_SHARE
    engine_tokens_per_s: float = 0.0
    resubmit_ms: float = 0.0
    resubmit_share_of_readback: float = 0.0


def _server_cpu_ms(pid: int) -> float:
    """CPU time used so far by every thread of ``pid`` (ms), from each thread's
    ``schedstat`` (ns): the clock-tick ``utime + stime`` is too coarse for phases of a few
    tens of ms."""
    total = 0
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total / 1e6


def _step_body(i: int, tokens: int) -> dict[str, object]:
    return {"type": "llm_call", "client_token": f"s-{i}",
            "input": {"model": "mock:echo-1", "prompt": f"step {i} of a long story",
                      "params": {"max_tokens": tokens}}}


async def _json(http: BenchClient, path: str, body: object) -> dict[str, Any]:
    """A ``POST`` answered with JSON, decoded."""
    _kind, raw = await http.body("POST", path, body)
    return dict(msgspec.json.decode(raw))


async def _run_steps(http: BenchClient, run_id: str, steps: int,
                     tokens: int) -> tuple[list[bytes], int]:
    """Submit S Steps one after the other, each read to its terminal frame: the stream
    the ``POST`` answered with, else ``GET .../stream``.

    Returns:
        The stream bodies and the HTTP requests each Step took (1 or 2).
    """
    bodies: list[bytes] = []
    trips = 1
    for i in range(steps):
        kind, raw = await http.body("POST", f"/v1/runs/{run_id}/steps", _step_body(i, tokens),
                                    stream=True)
        if not kind.startswith(_SSE):
            trips = 2
            _kind, raw = await http.body(
                "GET", f"/v1/steps/{msgspec.json.decode(raw)['step_id']}/stream")
        bodies.append(raw)
    return bodies, trips


async def _step_ids(http: BenchClient, run_id: str, steps: int, tokens: int) -> list[str]:
    """The Run's Steps, by resubmitting their bodies (idempotent, NERVE-4003)."""
    return [str((await _json(http, f"/v1/runs/{run_id}/steps", _step_body(i, tokens)))
                ["step_id"]) for i in range(steps)]


async def _round(pid: int, http: BenchClient, flow_id: str, steps: int,
                 tokens: int, replay_first: bool, seed: int) -> tuple[ReadbackRound, int]:
    rec = await _json(http, f"/v1/flows/{flow_id}/runs", {"seed": seed})
    c0, t0 = _server_cpu_ms(pid), time.perf_counter()
    _bodies, trips = await _run_steps(http, rec["run_id"], steps, tokens)
    record = (time.perf_counter() - t0, _server_cpu_ms(pid) - c0)
    rec_ids = await _step_ids(http, rec["run_id"], steps, tokens)
    figures: dict[str, tuple[float, float]] = {}
    replayed: list[bytes] = []
    read: list[bytes] = []
    again: list[bytes] = []
    for phase in (("replay", "resubmit", "readback") if replay_first
                  else ("readback", "replay", "resubmit")):
        if phase == "replay":
            run = await _json(http, f"/v1/flows/{flow_id}/runs", {
                "mode": "replay", "replay_of": rec["run_id"], "seed": seed})
            c0, t0 = _server_cpu_ms(pid), time.perf_counter()
            replayed, _trips = await _run_steps(http, run["run_id"], steps, tokens)
        elif phase == "resubmit":
            c0, t0 = _server_cpu_ms(pid), time.perf_counter()
            again, _trips = await _run_steps(http, run["run_id"], steps, tokens)
        else:
            c0, t0 = _server_cpu_ms(pid), time.perf_counter()
            read = [(await http.body("GET", f"/v1/steps/{step_id}/stream"))[1]
                    for step_id in rec_ids]
        figures[phase] = (time.perf_counter() - t0, _server_cpu_ms(pid) - c0)
    same = replayed == read == again and all(b.count(b"event: token\n") == tokens
                                             for b in read)
    return ReadbackRound(
        record_ms=round(record[0] * 1000, 2), replay_ms=round(figures["replay"][0] * 1000, 2),
        readback_ms=round(figures["readback"][0] * 1000, 2),
        record_cpu_ms=round(record[1], 2), replay_cpu_ms=round(figures["replay"][1], 2),
        readback_cpu_ms=round(figures["readback"][1], 2), replay_first=replay_first,
        byte_identical=same, resubmit_ms=round(figures["resubmit"][0] * 1000, 2),
        resubmit_cpu_ms=round(figures["resubmit"][1], 2)), trips


def _report(client: str, steps: int, tokens: int, trips: int,
            done: list[ReadbackRound]) -> ReadbackReport:
    """The medians and ratios of one client's rounds."""
    med = {k: statistics.median(getattr(r, k) for r in done)
           for k in ("record_ms", "replay_ms", "readback_ms", "record_cpu_ms",
                     "replay_cpu_ms", "readback_cpu_ms", "resubmit_ms")}
    total = steps * tokens
    replay_rate = total / (med["replay_ms"] / 1000)
    readback_rate = total / (med["readback_ms"] / 1000)
    return ReadbackReport(
        client=client, cpus=os.cpu_count() or 1, steps=steps, tokens_per_step=tokens,
        round_trips_per_step=trips,
        record_ms=round(med["record_ms"], 2), replay_ms=round(med["replay_ms"], 2),
        readback_ms=round(med["readback_ms"], 2),
        replay_over_record=round(med["replay_ms"] / med["record_ms"], 4),
        replay_tokens_per_s=round(replay_rate, 1), readback_tokens_per_s=round(readback_rate, 1),
        replay_share_of_readback=round(replay_rate / readback_rate, 4),
        record_server_us_per_token=round(med["record_cpu_ms"] / total * 1e3, 3),
        replay_server_us_per_token=round(med["replay_cpu_ms"] / total * 1e3, 3),
        readback_server_us_per_token=round(med["readback_cpu_ms"] / total * 1e3, 3),
        replay_over_record_server_cpu=round(med["replay_cpu_ms"] / med["record_cpu_ms"], 4),
        byte_identical=all(r.byte_identical for r in done), rounds=done,
        resubmit_ms=round(med["resubmit_ms"], 2),
        resubmit_share_of_readback=round(med["readback_ms"] / med["resubmit_ms"], 4)
        if med["resubmit_ms"] else 0.0)


async def _measure_readback(pid: int, url: str, steps: int, tokens: int,
                            rounds: int) -> list[ReadbackReport]:
    clients: list[BenchClient] = [RawClient(url), HttpxClient(url)]
    try:
        flow = await _json(clients[0], "/v1/flows", {"ast_ir": {"bench": "replay"}})
        for http in clients:
            await _round(pid, http, flow["flow_id"], 2, tokens, True, 1)  # warm-up
        done: dict[str, list[ReadbackRound]] = {http.name: [] for http in clients}
        trips: dict[str, int] = {}
        seed = 2
        for r in range(rounds):  # the clients take turns, each round in the other order
            for http in (clients if r % 2 == 0 else clients[::-1]):
                rnd, trips[http.name] = await _round(pid, http, flow["flow_id"], steps,
                                                     tokens, r % 2 == 0, seed)
                done[http.name].append(rnd)
                seed += 1
    finally:
        for http in clients:
            await http.aclose()
    return [_report(http.name, steps, tokens, trips[http.name], done[http.name])
            for http in clients]


def measure_readback(data_dir: pathlib.Path, steps: int = 20, tokens: int = 200,
                     rounds: int = 5, engine_tokens_per_s: float = 0.0) -> \
        list[ReadbackReport]:
    """Record, replay and read back S Steps of T tokens, R rounds per client, on a fresh
    server process whose mock engine answers exactly ``max_tokens`` tokens, as fast as it
    can or at ``engine_tokens_per_s``.

    Each round is run once with the raw client and once with httpx (the two take turns,
    in alternating order), every arm of a round with the same client
    (:mod:`tools.bench.replay_clients`).

    Args:
        data_dir: where the server keeps its store, config and log.
        steps: S, Steps per Run.
        tokens: T, tokens per Step.
        rounds: rounds per client after one short warm-up each (replay first in even
            rounds).
        engine_tokens_per_s: the mock engine's decode speed per Step (tokens/s; 0 = as
            fast as possible).

    Returns:
        One report per client, ``raw`` first: the medians, ratios and every round.

    Raises:
        RuntimeError: the server did not start, or a request failed.
    """
    from tools.bench.streams import ServerProcess

    server = ServerProcess(data_dir, tokens_per_s=engine_tokens_per_s, slots=4)
    server.start()
    try:
        reports = asyncio.run(_measure_readback(server.pid, server.url, steps, tokens, rounds))
        return [msgspec.structs.replace(r, engine_tokens_per_s=engine_tokens_per_s)
                for r in reports]
    finally:
        server.stop()


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


_CLIENT_TITLE = {
    "raw": "client: raw keep-alive HTTP/1.1 (tools/bench/rawhttp.py), the same for every arm",
    "httpx": "client: httpx, the same for every arm (the measure this bench printed before;"
             " httpx's own CPU per request is in every arm)",
}


def render_readback(report: ReadbackReport) -> str:
    """Human-readable report of one client (ms, tokens/s, µs)."""
    r = report
    how = ("POST answered with the stream" if r.round_trips_per_step == 1
           else "POST, then GET .../stream")
    lines = [
        _CLIENT_TITLE.get(r.client, f"client: {r.client}"),
        f"replay against record and against read-back: {r.steps} steps x "
        f"{r.tokens_per_step} tokens, mock engine "
        + (f"at {r.engine_tokens_per_s:g} tokens/s" if r.engine_tokens_per_s
           else "as fast as possible") + ", one step at a time",
        f"(Granian server process, {r.cpus} CPUs shared with this client; medians of "
        f"{len(r.rounds)} rounds; server CPU from every thread's schedstat)",
        f"record and replay steps: {how} ({r.round_trips_per_step} HTTP request(s) per step)",
        "",
        f"   {'phase':<26}{'wall ms':>10}{'tokens/s':>12}{'server CPU µs/token':>21}",
        f"   {'record':<26}{r.record_ms:>10.1f}"
        f"{r.steps * r.tokens_per_step / r.record_ms * 1000:>12,.0f}"
        f"{r.record_server_us_per_token:>21.2f}",
        f"   {'replay':<26}{r.replay_ms:>10.1f}"
        f"{r.replay_tokens_per_s:>12,.0f}{r.replay_server_us_per_token:>21.2f}",
        f"   {'read-back (GET stream)':<26}{r.readback_ms:>10.1f}"
        f"{r.readback_tokens_per_s:>12,.0f}{r.readback_server_us_per_token:>21.2f}",
        f"   {'resubmit (POST, no admit)':<26}{r.resubmit_ms:>10.1f}"
        f"{r.steps * r.tokens_per_step / r.resubmit_ms * 1000 if r.resubmit_ms else 0:>12,.0f}",
        "",
        f"   replay / record (wall)          {r.replay_over_record:>8.4f}   target <= "
        f"{r.target_replay_over_record:g}: "
        f"{_verdict(r.replay_over_record <= r.target_replay_over_record)}",
        f"   replay / record (server CPU)    {r.replay_over_record_server_cpu:>8.4f}",
        f"   replay tokens/s / read-back      {r.replay_share_of_readback:>8.2%}   target >= "
        f"{r.target_replay_share_of_readback:.0%}: "
        f"{_verdict(r.replay_share_of_readback >= r.target_replay_share_of_readback)}",
        f"   resubmit tokens/s / read-back    {r.resubmit_share_of_readback:>8.2%}   (the "
        "floor: the same POSTs answered from the stored Steps, nothing admitted)",
        f"   replayed bodies byte-identical to the recording: "
        f"{'yes' if r.byte_identical else 'NO'}",
        "",
        f"   {'round':<7}{'first':>9}{'record ms':>11}{'replay ms':>11}{'read-back ms':>14}"
        f"{'cpu ms rec/rep/read':>22}{'identical':>11}",
    ]
    for i, rd in enumerate(r.rounds):
        cpu = f"{rd.record_cpu_ms:.1f}/{rd.replay_cpu_ms:.1f}/{rd.readback_cpu_ms:.1f}"
        lines.append(f"   {i + 1:<7}{'replay' if rd.replay_first else 'read':>9}"
                     f"{rd.record_ms:>11.1f}{rd.replay_ms:>11.1f}{rd.readback_ms:>14.1f}"
                     f"{cpu:>22}{'yes' if rd.byte_identical else 'NO':>11}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line of ``python -m tools.bench.replay``."""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench.replay",
        description="Replay time / record time, and replay tokens/s against a plain "
                    "read-back of the same recording, on a Granian server process with "
                    "the mock engine.")
    p.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    p.add_argument("--tokens", type=int, default=200, help="tokens per step (default 200)")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds per client (default 5)")
    p.add_argument("--engine-tokens-per-s", type=float, default=0.0,
                   help="mock engine decode speed per step, tokens/s (default 0: as fast "
                        "as possible; 2000 is a CPU engine's pace)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if min(args.steps, args.tokens, args.rounds) < 1:
        p.error("--steps, --tokens and --rounds must be at least 1")
    if args.engine_tokens_per_s < 0:
        p.error("--engine-tokens-per-s must be at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure and print, the raw client's report first, then httpx's.

    Returns:
        0 when every replayed body was byte-identical to the recording, else 1 (the
        timing figures are reported whether or not they meet their targets).
    """
    args = parse_args(argv)
    if not args.json:
        print(f"recording, replaying and reading back {args.steps} x {args.tokens} tokens, "
              f"{args.rounds} rounds...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="orchestratord-replay-") as tmp:
        reports = measure_readback(pathlib.Path(tmp), args.steps, args.tokens, args.rounds,
                                   args.engine_tokens_per_s)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(reports), indent=2).decode())
    else:
        print("\n\n".join(render_readback(r) for r in reports))
    return 0 if all(r.byte_identical for r in reports) else 1


if __name__ == "__main__":
    raise SystemExit(main())
