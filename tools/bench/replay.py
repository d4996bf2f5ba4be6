"""Replay against record, and replay against reading the recording back.

Two measurements:

* :func:`measure_replay` (part of ``python -m tools.bench``): the demo flow (three
  ``llm_call`` Steps) through :func:`tools.demo.run_flow_modes`, which records the flow,
  replays it and strict-replays it, timing each mode from its first Step submission to
  its last ``end`` frame.
* ``python -m tools.bench.replay [--steps 20] [--tokens 200] [--rounds 3] [--json]``
  (:func:`measure_readback`): on a ``orchestratord`` Granian process of its own whose
  mock engine answers exactly ``max_tokens`` tokens as fast as it can, each round records
  a Run of S Steps of T tokens, replays it, and reads the recorded Steps' streams back,
  one Step after the other as an interpreter does; replay and read-back alternate which
  goes first. It prints, side by side: record, replay and read-back wall times; replay /
  record (target <= 0.2); replay tokens/s against plain read-back tokens/s (target >=
  80%); the server's CPU per token in each phase; and whether every replayed stream body
  is byte-identical to the recording's (NERVE-4025). Record and replay are ``POST
  /v1/runs/{id}/steps`` then ``GET /v1/steps/{id}/stream`` to the terminal frame;
  read-back is the ``GET`` alone. Bodies are read raw (no SSE parsing), so the figures
  are the server's and HTTP's, not a client parser's. Medians over rounds are reported.
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

import httpx
import msgspec

from orchestratord.client import OrchestratorClient
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
_TERMINALS = (b"event: end\n", b"event: error\n")


class ReadbackRound(msgspec.Struct, frozen=True):
    """One round: a Run recorded, replayed and read back.

    Attributes:
        record_ms: the S Steps recorded, one after the other (ms).
        replay_ms: the S Steps of a replay Run, one after the other (ms).
        readback_ms: the S recorded Steps' streams read again (ms).
        record_cpu_s: server CPU time while recording (s, every thread).
        replay_cpu_s: server CPU time while replaying (s).
        readback_cpu_s: server CPU time while reading back (s).
        replay_first: replay ran before the read-back in this round.
        byte_identical: every replayed body equals the recorded Step's read-back body,
            and each holds T token frames.
    """

    record_ms: float
    replay_ms: float
    readback_ms: float
    record_cpu_s: float
    replay_cpu_s: float
    readback_cpu_s: float
    replay_first: bool
    byte_identical: bool


class ReadbackReport(msgspec.Struct, frozen=True):
    """Replay against record and against plain read-back (medians over rounds).

    Attributes:
        cpus: CPUs online (the server and this client share them).
        steps: S, Steps per Run.
        tokens_per_step: T, token frames per Step.
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
        byte_identical: every round's replayed bodies equal the recording's.
        rounds: every round, in the order run.
        target_replay_over_record: the goal, at most.
        target_replay_share_of_readback: the goal, at least.
    """

    cpus: int
    steps: int
    tokens_per_step: int
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
    byte_identical: bool
    rounds: list[ReadbackRound]
    target_replay_over_record: float = _TARGET_REPLAY_OVER_RECORD
    target_replay_share_of_readback: float = _TARGET_RATE_SHARE


async def _body(http: httpx.AsyncClient, step_id: str) -> bytes:
    """The Step's stream body, read raw until its terminal frame."""
    parts: list[bytes] = []
    async with http.stream("GET", f"/v1/steps/{step_id}/stream") as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"stream of {step_id}: {resp.status_code}")
        async for chunk in resp.aiter_raw():
            parts.append(chunk)
            if any(t in chunk for t in _TERMINALS):  # one write ends with the terminal frame
                break
    return b"".join(parts)


async def _run_steps(http: httpx.AsyncClient, run_id: str, steps: int,
                     tokens: int) -> tuple[list[str], list[bytes]]:
    """Submit S Steps one after the other, each read to its terminal frame."""
    ids: list[str] = []
    bodies: list[bytes] = []
    for i in range(steps):
        body = {"type": "llm_call", "client_token": f"s-{i}",
                "input": {"model": "mock:echo-1", "prompt": f"step {i} of a long story",
                          "params": {"max_tokens": tokens}}}
        resp = await http.post(f"/v1/runs/{run_id}/steps", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"submit failed: {resp.status_code} {resp.text}")
        ids.append(resp.json()["step_id"])
        bodies.append(await _body(http, ids[-1]))
    return ids, bodies


async def _round(server: object, http: httpx.AsyncClient, flow_id: str, steps: int,
                 tokens: int, replay_first: bool, seed: int) -> ReadbackRound:
    cpu = server.cpu_s  # type: ignore[attr-defined]
    rec = (await http.post(f"/v1/flows/{flow_id}/runs", json={"seed": seed})).json()
    c0, t0 = cpu(), time.perf_counter()
    rec_ids, _ = await _run_steps(http, rec["run_id"], steps, tokens)
    record = (time.perf_counter() - t0, cpu() - c0)
    figures: dict[str, tuple[float, float]] = {}
    replayed: list[bytes] = []
    read: list[bytes] = []
    for phase in (("replay", "readback") if replay_first else ("readback", "replay")):
        if phase == "replay":
            run = (await http.post(f"/v1/flows/{flow_id}/runs", json={
                "mode": "replay", "replay_of": rec["run_id"], "seed": seed})).json()
            c0, t0 = cpu(), time.perf_counter()
            _, replayed = await _run_steps(http, run["run_id"], steps, tokens)
        else:
            c0, t0 = cpu(), time.perf_counter()
            read = [await _body(http, step_id) for step_id in rec_ids]
        figures[phase] = (time.perf_counter() - t0, cpu() - c0)
    same = replayed == read and all(b.count(b"event: token\n") == tokens for b in read)
    return ReadbackRound(
        record_ms=round(record[0] * 1000, 2), replay_ms=round(figures["replay"][0] * 1000, 2),
        readback_ms=round(figures["readback"][0] * 1000, 2), record_cpu_s=round(record[1], 3),
        replay_cpu_s=round(figures["replay"][1], 3),
        readback_cpu_s=round(figures["readback"][1], 3), replay_first=replay_first,
        byte_identical=same)


async def _measure_readback(server: object, url: str, steps: int, tokens: int,
                            rounds: int) -> ReadbackReport:
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as http:
        flow = (await http.post("/v1/flows", json={"ast_ir": {"bench": "replay"}})).json()
        await _round(server, http, flow["flow_id"], 2, tokens, True, 1)  # warm-up
        done = [await _round(server, http, flow["flow_id"], steps, tokens, r % 2 == 0, 2 + r)
                for r in range(rounds)]
    med = {k: statistics.median(getattr(r, k) for r in done)
           for k in ("record_ms", "replay_ms", "readback_ms", "record_cpu_s", "replay_cpu_s",
                     "readback_cpu_s")}
    total = steps * tokens
    replay_rate = total / (med["replay_ms"] / 1000)
    readback_rate = total / (med["readback_ms"] / 1000)
    return ReadbackReport(
        cpus=os.cpu_count() or 1, steps=steps, tokens_per_step=tokens,
        record_ms=round(med["record_ms"], 2), replay_ms=round(med["replay_ms"], 2),
        readback_ms=round(med["readback_ms"], 2),
        replay_over_record=round(med["replay_ms"] / med["record_ms"], 4),
        replay_tokens_per_s=round(replay_rate, 1), readback_tokens_per_s=round(readback_rate, 1),
        replay_share_of_readback=round(replay_rate / readback_rate, 4),
        record_server_us_per_token=round(med["record_cpu_s"] / total * 1e6, 2),
        replay_server_us_per_token=round(med["replay_cpu_s"] / total * 1e6, 2),
        readback_server_us_per_token=round(med["readback_cpu_s"] / total * 1e6, 2),
        byte_identical=all(r.byte_identical for r in done), rounds=done)


def measure_readback(data_dir: pathlib.Path, steps: int = 20, tokens: int = 200,
                     rounds: int = 3) -> ReadbackReport:
    """Record, replay and read back S Steps of T tokens, R rounds, on a fresh server
    process whose mock engine answers exactly ``max_tokens`` tokens as fast as it can.

    Args:
        data_dir: where the server keeps its store, config and log.
        steps: S, Steps per Run.
        tokens: T, tokens per Step.
        rounds: rounds after one short warm-up (replay first in even rounds).

    Returns:
        The medians, ratios and every round.

    Raises:
        RuntimeError: the server did not start, or a request failed.
    """
    from tools.bench.streams import ServerProcess

    server = ServerProcess(data_dir, tokens_per_s=0, slots=4)
    server.start()
    try:
        return asyncio.run(_measure_readback(server, server.url, steps, tokens, rounds))
    finally:
        server.stop()


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def render_readback(report: ReadbackReport) -> str:
    """Human-readable report (ms, tokens/s, µs)."""
    r = report
    lines = [
        f"replay against record and against read-back: {r.steps} steps x "
        f"{r.tokens_per_step} tokens, mock engine as fast as possible, one step at a time",
        f"(Granian server process, {r.cpus} CPUs shared with this client; medians of "
        f"{len(r.rounds)} rounds; server CPU = utime + stime of every thread)",
        "",
        f"   {'phase':<34}{'wall ms':>10}{'tokens/s':>12}{'server µs/token':>17}",
        f"   {'record (POST + GET stream)':<34}{r.record_ms:>10.1f}"
        f"{r.steps * r.tokens_per_step / r.record_ms * 1000:>12,.0f}"
        f"{r.record_server_us_per_token:>17.2f}",
        f"   {'replay (POST + GET stream)':<34}{r.replay_ms:>10.1f}"
        f"{r.replay_tokens_per_s:>12,.0f}{r.replay_server_us_per_token:>17.2f}",
        f"   {'read-back (GET stream)':<34}{r.readback_ms:>10.1f}"
        f"{r.readback_tokens_per_s:>12,.0f}{r.readback_server_us_per_token:>17.2f}",
        "",
        f"   replay / record                 {r.replay_over_record:>8.4f}   target <= "
        f"{r.target_replay_over_record:g}: "
        f"{_verdict(r.replay_over_record <= r.target_replay_over_record)}",
        f"   replay tokens/s / read-back      {r.replay_share_of_readback:>8.2%}   target >= "
        f"{r.target_replay_share_of_readback:.0%}: "
        f"{_verdict(r.replay_share_of_readback >= r.target_replay_share_of_readback)}",
        f"   replayed bodies byte-identical to the recording: "
        f"{'yes' if r.byte_identical else 'NO'}",
        "",
        f"   {'round':<7}{'first':>9}{'record ms':>11}{'replay ms':>11}{'read-back ms':>14}"
        f"{'identical':>11}",
    ]
    for i, rd in enumerate(r.rounds):
        lines.append(f"   {i + 1:<7}{'replay' if rd.replay_first else 'read':>9}"
                     f"{rd.record_ms:>11.1f}{rd.replay_ms:>11.1f}{rd.readback_ms:>14.1f}"
                     f"{'yes' if rd.byte_identical else 'NO':>11}")
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
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if min(args.steps, args.tokens, args.rounds) < 1:
        p.error("--steps, --tokens and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Measure and print.

    Returns:
        0 when every replayed body was byte-identical to the recording, else 1 (the
        timing figures are reported whether or not they meet their targets).
    """
    args = parse_args(argv)
    if not args.json:
        print(f"recording, replaying and reading back {args.steps} x {args.tokens} tokens, "
              f"{args.rounds} rounds...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="orchestratord-replay-") as tmp:
        report = measure_readback(pathlib.Path(tmp), args.steps, args.tokens, args.rounds)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        print(render_readback(report))
    return 0 if report.byte_identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
