"""Latency of the OpenAI facade against the native Step route, side by side (OAI-6001).

``python -m tools.bench.facade [--rounds R] [--per-round K] [--max-tokens N]`` starts a
mock-engine ``orchestratord serve`` process and times, alternating request by request so
that drift hits every path alike, each with the same raw prompt and parameters:

* ``native``: ``POST /v1/runs/{id}/steps`` then its SSE stream to the ``end`` frame;
* ``native_one_trip``: the same POST with ``Accept: text/event-stream``, answered with
  the stream itself (STREAM-2010), to the last body byte;
* ``facade``: ``POST .../openai/v1/completions`` (not streamed) to the last body byte;
* ``facade_stream``: the same with ``stream: true``, to ``data: [DONE]``.

Every request is new (a fresh client_token, or a fresh ``user`` field for the facade,
which is part of the call's identity), so each is a real ``llm_call`` Step. It prints
one JSON document: p50 and p99 per path (ms) and the facade's added p50 over the
native paths (negative: the facade is faster, being one round trip).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from typing import Any

import anyio
import httpx
import msgspec

from orchestratord.client import OrchestratorClient
from tools.servers import start_server, stop_server

from .stats import PathStats, summarise

__all__ = ["FacadeReport", "main", "measure_facade"]

_MODEL = "mock:echo-1"
_PROMPT = "The three primary colours are"
_fresh = itertools.count()


class FacadeReport(msgspec.Struct, frozen=True):
    """Per-path latency (ms) and the facade's added p50 over the native route (ms)."""

    native: PathStats
    native_one_trip: PathStats
    facade: PathStats
    facade_stream: PathStats
    added_p50_ms: float
    added_stream_p50_ms: float
    added_over_one_trip_p50_ms: float


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


async def _native(client: OrchestratorClient, run_id: str, max_tokens: int) -> float:
    body = {"type": "llm_call", "client_token": f"bench-{next(_fresh)}",
            "input": {"model": _MODEL, "prompt": _PROMPT,
                      "params": {"max_tokens": max_tokens, "seed": 1}}}
    t0 = time.perf_counter_ns()
    step = await client.submit_step(run_id, body)
    async for frame in client.stream(step.step_id):
        if frame.event in ("end", "error"):
            return _ms(t0)
    raise RuntimeError("stream ended without a terminal frame")


async def _native_one_trip(http: httpx.AsyncClient, run_id: str, max_tokens: int) -> float:
    body = {"type": "llm_call", "client_token": f"bench-{next(_fresh)}",
            "input": {"model": _MODEL, "prompt": _PROMPT,
                      "params": {"max_tokens": max_tokens, "seed": 1}}}
    t0 = time.perf_counter_ns()
    async with http.stream("POST", f"/v1/runs/{run_id}/steps", json=body,
                           headers={"Accept": "text/event-stream"}) as resp:
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"steps answered {resp.status_code}: {await resp.aread()!r}")
        async for _chunk in resp.aiter_bytes():
            pass
    return _ms(t0)


async def _facade(http: httpx.AsyncClient, run_id: str, max_tokens: int,
                  stream: bool) -> float:
    body: dict[str, Any] = {"model": _MODEL, "prompt": _PROMPT, "max_tokens": max_tokens,
                            "seed": 1, "user": f"bench-{next(_fresh)}", "stream": stream}
    t0 = time.perf_counter_ns()
    async with http.stream("POST", f"/v1/runs/{run_id}/openai/v1/completions",
                           json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"facade answered {resp.status_code}: {await resp.aread()!r}")
        async for _chunk in resp.aiter_bytes():
            pass
    return _ms(t0)


async def measure_facade(url: str, rounds: int, per_round: int,
                         max_tokens: int) -> FacadeReport:
    """Time the three paths on the server at ``url`` (see the module docstring)."""
    async with OrchestratorClient(url, timeout_s=60.0) as client, \
            httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        flow = (await http.post("/v1/flows", json={"ast_ir": {"bench": "facade"}})).json()
        run = (await http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1})).json()
        run_id = run["run_id"]
        for _ in range(5):  # warm-up
            await _native(client, run_id, max_tokens)
            await _facade(http, run_id, max_tokens, False)
        samples: dict[str, list[list[float]]] = {"native": [], "native_one_trip": [],
                                                 "facade": [], "facade_stream": []}
        for _ in range(rounds):
            row: dict[str, list[float]] = {k: [] for k in samples}
            for _ in range(per_round):
                row["native"].append(await _native(client, run_id, max_tokens))
                row["native_one_trip"].append(await _native_one_trip(http, run_id, max_tokens))
                row["facade"].append(await _facade(http, run_id, max_tokens, False))
                row["facade_stream"].append(await _facade(http, run_id, max_tokens, True))
            for key, values in row.items():
                samples[key].append(values)
    stats = {k: summarise(v) for k, v in samples.items()}
    return FacadeReport(native=stats["native"], native_one_trip=stats["native_one_trip"],
                        facade=stats["facade"], facade_stream=stats["facade_stream"],
                        added_p50_ms=round(stats["facade"].p50_ms - stats["native"].p50_ms, 3),
                        added_stream_p50_ms=round(stats["facade_stream"].p50_ms
                                                  - stats["native"].p50_ms, 3),
                        added_over_one_trip_p50_ms=round(
                            stats["facade_stream"].p50_ms - stats["native_one_trip"].p50_ms,
                            3))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on a fresh mock-engine server and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.facade")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    proc, url = start_server(mock=True)
    try:
        report = anyio.run(measure_facade, url, args.rounds, args.per_round, args.max_tokens)
    finally:
        stop_server(proc)
    summary = {k: {"p50_ms": v.p50_ms, "p99_ms": v.p99_ms} if isinstance(v, PathStats) else v
               for k, v in msgspec.structs.asdict(report).items()}
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(summary), indent=2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
