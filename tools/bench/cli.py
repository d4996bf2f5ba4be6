"""Command line of ``python -m tools.bench``: start (or reuse) a server, measure, print."""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import sys
import tempfile
from typing import Any

import anyio
import httpx
import msgspec

from orchestratord.client import OrchestratorClient
from tools.servers import start_server, stop_server

from .engines import EnginesReport, measure_engines
from .latency import ProbeConfig, measure_latency
from .observability import measure as measure_observability
from .recordings import measure as measure_recordings
from .replay import default_document, measure_replay
from .report import BenchReport, render_json, render_text

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description="Added latency of an llm_call step vs the engine called directly, "
                    "and replay time / record time of the demo flow.")
    p.add_argument("--mock", action="store_true",
                   help="start the server with the mock engine (direct: the mock handler in "
                        "the bench process)")
    p.add_argument("--url", help="use this running server instead of starting one")
    p.add_argument("--rounds", type=int, default=5, help="rounds R (default 5)")
    p.add_argument("--per-round", type=int, default=10,
                   help="requests per path per round K (default 10)")
    p.add_argument("--max-tokens", type=int, default=8,
                   help="tokens generated per latency request (default 8)")
    p.add_argument("--no-engines", action="store_true",
                   help="skip the engine paths comparison (in-process, worker, old server)")
    p.add_argument("--engine-requests", type=int, default=15,
                   help="timed requests per engine path and length (default 15)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed (default 1234)")
    p.add_argument("--file", type=pathlib.Path, default=None,
                   help="document the demo flow summarises (default: as python -m tools.demo)")
    p.add_argument("--no-recordings", action="store_true",
                   help="skip the recordings measurement (export, import, replay of an "
                        "imported recording; in-process servers)")
    p.add_argument("--no-observability", action="store_true",
                   help="skip what logs and traces add (three mock-engine servers; "
                        "--rounds x --per-round requests each)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.per_round < 1 or args.max_tokens < 1:
        p.error("--rounds, --per-round and --max-tokens must be at least 1")
    return args


async def _measure(url: str, started: bool, cfg: ProbeConfig,
                   document: pathlib.Path, text: str) -> BenchReport:
    async with OrchestratorClient(url, timeout_s=120.0) as client:
        pools = await client.pools()
        engine = ", ".join(sorted({p.engine.name for p in pools}))
        latency = await measure_latency(client, cfg)
        replay = await measure_replay(client, document, text)
    return BenchReport(server_url=url, server_started=started, engine=engine,
                       latency=latency, replay=replay)


def _engines(url: str, requests: int, work_dir: pathlib.Path) -> EnginesReport | None:
    """Measurement 0 against the first llama.cpp worker replica, if the server has one."""
    from worker_adapters.llamacpp import default_model_path

    for pool in httpx.get(url + "/v1/pools", timeout=10.0).json():
        if pool["engine"]["name"] != "llama.cpp":
            continue
        for replica in pool["replicas"]:
            if replica.get("url") and replica["health"] == "ready":
                return measure_engines(replica["url"], default_model_path(), work_dir,
                                       requests=requests)
    return None


def _more(args: argparse.Namespace) -> dict[str, Any]:
    """Measurements 3 and 4 (REC-7115): the recordings (3 Steps of 3,400 tokens a round,
    about 10,000 frames) and observability, ``--rounds`` rounds each."""
    more: dict[str, Any] = {}
    if not args.no_recordings:
        if not args.json:
            print("measuring recordings...", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # Granian's embedded logs: not the report
            more["recordings"] = measure_recordings(3, 3400, args.rounds)
    if not args.no_observability:
        if not args.json:
            print("measuring observability...", file=sys.stderr, flush=True)
        more["observability"] = measure_observability(args.rounds, args.per_round,
                                                      min(20, args.per_round),
                                                      args.max_tokens)
    return more


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print them.

    Returns:
        0 when both paths produced identical output and every replay (of the demo, and
        of the imported recording) was byte-identical; 1 otherwise.
    """
    args = parse_args(argv)
    cfg = ProbeConfig(max_tokens=args.max_tokens, seed=args.seed, rounds=args.rounds,
                      per_round=args.per_round)
    document: pathlib.Path = args.file or default_document()
    text = document.read_text(encoding="utf-8")
    url: str | None = args.url
    proc = None
    data_dir: str | None = None
    ok = False
    try:
        if url is None:
            data_dir = tempfile.mkdtemp(prefix="orchestratord-bench-")
            if not args.json:
                engine = "mock engine" if args.mock else "default config, llama.cpp"
                print(f"starting orchestratord ({engine})...", file=sys.stderr, flush=True)
            proc, url = start_server(mock=args.mock, data_dir=data_dir)
        engines = None
        if not (args.mock or args.no_engines):
            work = pathlib.Path(data_dir or tempfile.mkdtemp(prefix="orchestratord-bench-"))
            engines = _engines(url, args.engine_requests, work)
        report = anyio.run(_measure, url, proc is not None, cfg, document, text)
        report = msgspec.structs.replace(report, engines=engines)
        if proc is not None:
            stop_server(proc)  # the next measurements start servers of their own
            proc = None
        report = msgspec.structs.replace(report, **_more(args))
        ok = True
    finally:
        if proc is not None:
            stop_server(proc)
        if data_dir is not None:
            if ok:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                print(f"server data and log kept in {data_dir}", file=sys.stderr)
    print(render_json(report) if args.json else render_text(report))
    lat, rep = report.latency, report.replay
    good = lat.same_output and rep.replay_byte_identical and rep.strict_replay_byte_identical
    good = good and (report.recordings is None or report.recordings.byte_identical)
    return 0 if good else 1
