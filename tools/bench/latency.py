"""Added latency of an ``llm_call`` Step over a direct request to the engine replica.

The orchestrator path is timed from just before ``POST /v1/runs/{id}/steps`` to the
receipt of the Step's ``end`` SSE frame, in one round trip: the submission asks for the
stream itself (``Accept: text/event-stream``, STREAM-2010), as the Python client's
``run_step`` does. The two-round-trip path (the stream opened with ``GET`` right after
the POST answers) is timed too. On the mock engine, which has no HTTP endpoint, the
direct path is the same seeded mock handler iterated in the bench process. Otherwise
the direct path is timed from just before
``POST {replica_url}/v1/generate`` to the worker's finish line (the point where the
orchestrator's adapter considers the completion done); the time to the end of the body
is recorded as well. Both paths send the same raw prompt, every sampling parameter and
the same seed, and are alternated request by request so that drift (thermal, caches,
other load) hits both alike.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import httpx
import msgspec

from contracts.pools import ReplicaHealth
from orchestratord.client import Frame, OrchestratorClient
from tools.listeners import listening_addresses
from worker_adapters.base import CompletionRequest, Delta
from worker_adapters.llamacpp_engine import WorkerLine, generate_body
from worker_adapters.mock import default_handler

from .stats import PathStats, summarise

__all__ = [
    "LatencyReport",
    "ProbeConfig",
    "Sample",
    "direct_sample",
    "engine_body",
    "find_replica_url",
    "measure_latency",
]

_BENCH_FLOW = {"version": 1, "name": "bench-added-latency",
               "steps": [{"id": "probe", "op": "llm_call", "inputs": []}]}


class ProbeConfig(msgspec.Struct, frozen=True):
    """What is requested, how often.

    Attributes:
        prompt: raw prompt text (sent as ``prompt``, never through a chat template).
        max_tokens: tokens to generate per request.
        seed: sampling seed sent on both paths.
        rounds: R, rounds of alternating requests.
        per_round: K, requests per path per round.
    """

    prompt: str = "The three primary colours are"
    max_tokens: int = 8
    seed: int = 1234
    rounds: int = 5
    per_round: int = 10


class Sample(msgspec.Struct, frozen=True):
    """One timed request.

    Attributes:
        ms: time to completion (ms): ``end`` frame, or the worker's finish line.
        done_ms: direct path only: time to the end of the body (ms); else equal to ``ms``.
        text: generated text.
        tokens: streamed token pieces (orchestrator ``token`` frames / engine chunks).
    """

    ms: float
    done_ms: float
    text: str
    tokens: int


class LatencyReport(msgspec.Struct, frozen=True):
    """Result of :func:`measure_latency`; ``direct`` fields are None without a replica URL.

    Attributes:
        model: model id the Steps asked for.
        replica_url: the engine replica called directly (None for the mock engine).
        run_id: the record Run holding every orchestrator Step.
        config: the probe.
        text: generated text of the warm-up orchestrator request.
        tokens: token frames of the warm-up orchestrator request.
        same_output: every request on both paths produced the warm-up's text.
        orchestrator: orchestrator path statistics (ms).
        direct: direct path statistics, to the finish line (ms).
        direct_done: direct path statistics, to the end of the body (ms).
        orchestrator_two_trips: the orchestrator path in two round trips, ``POST`` then
            ``GET`` the stream (ms).
        direct_kind: ``engine`` (the replica over HTTP) or ``in-process mock``.
        added_p50_ms: ``orchestrator.p50_ms - direct.p50_ms`` (ms).
        added_p99_ms: ``orchestrator.p99_ms - direct.p99_ms`` (ms).
        ratio_p50: ``orchestrator.p50_ms / direct.p50_ms``.
        ratio_p99: ``orchestrator.p99_ms / direct.p99_ms``.
    """

    model: str
    replica_url: str | None
    run_id: str
    config: ProbeConfig
    text: str
    tokens: int
    same_output: bool
    orchestrator: PathStats
    orchestrator_two_trips: PathStats | None = None
    direct_kind: str = "engine"
    direct: PathStats | None = None
    direct_done: PathStats | None = None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    ratio_p50: float | None = None
    ratio_p99: float | None = None


_line = msgspec.json.Decoder(WorkerLine)


def _ms_since(t0_ns: int) -> float:
    return (time.perf_counter_ns() - t0_ns) / 1e6


def engine_body(cfg: ProbeConfig) -> dict[str, object]:
    """The direct ``/v1/generate`` body: exactly what the adapter sends."""
    return generate_body(CompletionRequest(
        prompt=cfg.prompt, seed=cfg.seed, temperature=0.0, top_k=40, top_p=0.95,
        min_p=0.05, repeat_penalty=1.0, max_tokens=cfg.max_tokens))


def _step_body(cfg: ProbeConfig, model: str, client_token: str) -> dict[str, object]:
    params = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
              "repeat_penalty": 1.0, "max_tokens": cfg.max_tokens, "seed": cfg.seed,
              "stop": []}
    return {"type": "llm_call", "client_token": client_token,
            "input": {"model": model, "prompt": cfg.prompt, "params": params}}


async def find_replica_url(client: OrchestratorClient, model: str) -> str | None:
    """Loopback URL of the first ready replica serving ``model`` (None if it has none).

    ``GET /v1/pools`` names no engine URL (PLACE-5009); the port is the loopback socket
    the replica's process (its ``pid``) listens on, so this works only on the server's
    own machine, as the engine-direct measure must.
    """
    for pool in await client.pools():
        if any(m.id == model for m in pool.models):
            for replica in pool.replicas:
                if replica.pid is None or replica.health != ReplicaHealth.READY:
                    continue
                for host, port in listening_addresses(replica.pid):
                    if host == "127.0.0.1":
                        return f"http://127.0.0.1:{port}"
    return None


async def _orchestrator_once(client: OrchestratorClient, run_id: str,
                             body: dict[str, object]) -> Sample:
    """One round trip: the submission answers with the stream (STREAM-2010)."""
    t0 = time.perf_counter_ns()
    async with client.submit_stream(run_id, body) as submitted:
        return await _sample_of(submitted.frames(), submitted.step_id, t0)


async def _orchestrator_two_trips(client: OrchestratorClient, run_id: str,
                                  body: dict[str, object]) -> Sample:
    """Two round trips: ``POST`` the Step, then ``GET`` its stream."""
    t0 = time.perf_counter_ns()
    step = await client.submit_step(run_id, body)
    return await _sample_of(client.stream(step.step_id), step.step_id, t0)


async def _sample_of(frames: AsyncIterator[Frame], step_id: str, t0: int) -> Sample:
    """Read a Step's frames to its ``end``: the text and the time from ``t0`` (ns)."""
    pieces: list[str] = []
    async for frame in frames:
        if frame.event == "token":
            pieces.append(frame.json()["t"])
        elif frame.event == "end":
            ms = _ms_since(t0)
            return Sample(ms=ms, done_ms=ms, text="".join(pieces), tokens=len(pieces))
        elif frame.event == "error":
            raise RuntimeError(f"step {step_id} failed: {frame.raw}")
    raise RuntimeError(f"step {step_id}: stream ended without a terminal frame")


async def _mock_once(cfg: ProbeConfig) -> Sample:
    """The seeded mock handler the server's mock pool runs, iterated in this process
    (the mock engine has no HTTP endpoint)."""
    req = CompletionRequest(prompt=cfg.prompt, seed=cfg.seed, temperature=0.0, top_k=40,
                            top_p=0.95, min_p=0.05, repeat_penalty=1.0,
                            max_tokens=cfg.max_tokens)
    t0 = time.perf_counter_ns()
    pieces = [item.text async for item in default_handler()(req) if isinstance(item, Delta)]
    ms = _ms_since(t0)
    return Sample(ms=ms, done_ms=ms, text="".join(pieces), tokens=len(pieces))


async def _direct_once(http: httpx.AsyncClient, body: dict[str, object]) -> Sample:
    t0 = time.perf_counter_ns()
    final_ms: float | None = None
    data: list[bytes] = []
    async with http.stream("POST", "/v1/generate", json=body) as resp:
        if resp.status_code != 200:
            detail = (await resp.aread())[:300].decode("utf-8", "replace")
            raise RuntimeError(f"engine answered HTTP {resp.status_code}: {detail}")
        async for raw in resp.aiter_lines():
            if not raw:
                continue
            line = _line.decode(raw)
            if line.id is not None:
                data.append(base64.b64decode(line.b or ""))
            elif line.finish_reason is not None and final_ms is None:
                final_ms = _ms_since(t0)
    done_ms = _ms_since(t0)
    if final_ms is None:
        raise RuntimeError("engine stream ended without a finish line")
    text = b"".join(data).decode("utf-8", "replace")
    return Sample(ms=final_ms, done_ms=done_ms, text=text, tokens=len(data))


async def direct_sample(http: httpx.AsyncClient | None, cfg: ProbeConfig) -> Sample:
    """One request to the engine called directly, bypassing the orchestrator.

    Args:
        http: a client whose ``base_url`` is the replica (:func:`find_replica_url`), or
            None for the mock engine, whose seeded handler is then run in this process.
        cfg: the probe (prompt, max_tokens, seed).

    Returns:
        The timed sample (``ms`` to the finish line, ``done_ms`` to the body's end).

    Raises:
        RuntimeError: the engine answered a non-200 status or no finish line.
    """
    if http is None:
        return await _mock_once(cfg)
    return await _direct_once(http, engine_body(cfg))


async def measure_latency(client: OrchestratorClient, cfg: ProbeConfig) -> LatencyReport:
    """Alternate orchestrator (one and two round trips) and direct requests; summarise.

    One warm-up request per path is made first and not counted. Without a replica URL
    (mock engine) the direct path is the mock handler in this process.

    Args:
        client: connected to the server under test.
        cfg: the probe.

    Returns:
        Per-path statistics (ms) and the added latency (ms and ratio).
    """
    model = (await client.capabilities()).models[0].id
    url = await find_replica_url(client, model)
    flow = await client.create_flow(_BENCH_FLOW, config={"model": model})
    run = await client.create_run(flow.flow_id, mode="record", seed=cfg.seed)
    direct_body = engine_body(cfg)
    orch: list[list[float]] = []
    two: list[list[float]] = []
    direct: list[list[float]] = []
    direct_done: list[list[float]] = []
    async with httpx.AsyncClient(base_url=url or "http://unused.invalid",
                                 timeout=httpx.Timeout(120.0, connect=5.0)) as http:

        async def direct_once() -> Sample:
            return await (_direct_once(http, direct_body) if url is not None
                          else _mock_once(cfg))

        warm = await _orchestrator_once(client, run.run_id,
                                        _step_body(cfg, model, "bench-warmup"))
        await _orchestrator_two_trips(client, run.run_id,
                                      _step_body(cfg, model, "bench-warmup-2"))
        same = (await direct_once()).text == warm.text
        for r in range(cfg.rounds):
            for series in (orch, two, direct, direct_done):
                series.append([])
            for i in range(cfg.per_round):
                o = await _orchestrator_once(client, run.run_id,
                                             _step_body(cfg, model, f"bench-r{r}-i{i}"))
                orch[-1].append(o.ms)
                t = await _orchestrator_two_trips(client, run.run_id,
                                                  _step_body(cfg, model, f"bench-r{r}-i{i}-2"))
                two[-1].append(t.ms)
                d = await direct_once()
                direct[-1].append(d.ms)
                direct_done[-1].append(d.done_ms)
                same = same and o.text == t.text == d.text == warm.text
    o_stats = summarise(orch)
    report = LatencyReport(model=model, replica_url=url, run_id=run.run_id, config=cfg,
                           text=warm.text, tokens=warm.tokens, same_output=same,
                           orchestrator=o_stats, orchestrator_two_trips=summarise(two),
                           direct_kind="engine" if url is not None else "in-process mock")
    d_stats = summarise(direct)
    return msgspec.structs.replace(
        report, direct=d_stats, direct_done=summarise(direct_done),
        added_p50_ms=round(o_stats.p50_ms - d_stats.p50_ms, 3),
        added_p99_ms=round(o_stats.p99_ms - d_stats.p99_ms, 3),
        ratio_p50=round(o_stats.p50_ms / d_stats.p50_ms, 4),
        ratio_p99=round(o_stats.p99_ms / d_stats.p99_ms, 4))
