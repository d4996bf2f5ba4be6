"""Added latency of an ``llm_call`` over HTTP, with LiteLLM's proxy as the reference peer.

Run as ``python -m tools.bench.overhead [--rounds R] [--per-round K] [--json]``. It starts
the OpenAI-compatible mock server (:mod:`tools.bench.mock_openai`), one orchestratord with
two pools, the in-process mock engine (``mock-0``) and an ``openai_http`` pool in front of
the mock server (``http-0``, dialect ``llama-server``, no model file), and, if it can be
installed in its own venv (:mod:`tools.bench.peers`), LiteLLM's proxy in front of the same
mock server. Every path asks for the same raw prompt, ``max_tokens`` and seed, and is timed
from just before its request to the receipt of its last frame (orchestratord: the ``end``
frame; OpenAI-compatible: ``data: [DONE]``, or the whole body when not streamed; with the
default ``--client raw``, to the end of each answer). The paths are alternated request by
request, in an order rotated at each request (each path follows each other path as
often), so drift and the previous request's after-work hit all alike, in two blocks:
orchestratord's paths with their baselines, then LiteLLM's with theirs (what the proxy
does after answering, its logging tasks, would otherwise land on the next path's
request). All use the same client:
by default a minimal keep-alive HTTP/1.1 client (:mod:`tools.bench.rawhttp`), since httpx
alone spends about 1.2 ms of CPU per streamed request here; ``--client httpx`` measures
with httpx.

Paths and what is subtracted from them (the "added" figures):

* orchestratord, one round trip: ``POST /v1/runs/{id}/steps`` with ``Accept:
  text/event-stream`` (STREAM-2010), minus the mock engine called in-process;
* orchestratord, two round trips: ``POST`` then ``GET /v1/steps/{id}/stream``, minus the
  same;
* orchestratord on the standard library's loop (a second server, ``serve --loop
  asyncio``), one round trip, minus the same: the first server runs on uvloop (OBS-8069);
* orchestratord over HTTP to the mock server (one round trip), minus the mock server's
  streamed ``/v1/completions`` called directly;
* LiteLLM, streamed and not: ``/v1/chat/completions`` through the proxy, minus the same
  request to the mock server.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec

from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig, mock_config
from tools.servers import start_server, stop_server
from worker_adapters.base import CompletionRequest, Finish
from worker_adapters.mock import default_handler

from .mock_openai import MODEL as HTTP_MODEL
from .mock_openai import spawn as spawn_mock
from .peers import LITELLM_SPEC, LiteLLMProxy, ensure_litellm
from .rawhttp import RawHttp
from .stats import PathStats, summarise

__all__ = ["ONE_TRIP", "OverheadReport", "PathResult", "http_pool", "llm_call_added", "main",
           "measure", "render_text"]

PROMPT = "The three primary colours are"
MOCK_MODEL = "mock:echo-1"
ONE_TRIP = "orchestratord, 1 round trip (POST -> end)"
"""The path whose added latency is the target (``POST`` with ``Accept:
text/event-stream`` to the ``end`` frame, minus the mock engine called in-process)."""
Probe = Callable[[], Awaitable[float]]


class PathResult(msgspec.Struct, frozen=True):
    """One path's latency and what it adds over its baseline.

    Attributes:
        name: the path.
        stats: its latency (ms).
        baseline: the path subtracted from it ("" for a baseline).
        added_p50_ms / added_p99_ms: ``p50 - baseline p50``, ``p99 - baseline p99`` (ms).
    """

    name: str
    stats: PathStats
    baseline: str = ""
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


class OverheadReport(msgspec.Struct, frozen=True):
    """Result of :func:`measure`.

    Attributes:
        rounds / per_round: R rounds of K requests per path.
        max_tokens: tokens per request.
        paths: every path, baselines included.
        peer: the LiteLLM version measured, or why it was skipped.
        client: the benchmark's HTTP client, ``raw`` or ``httpx``.
        target_p50_ms / target_p99_ms: the goal for orchestratord's one round trip (ms).
    """

    rounds: int
    per_round: int
    max_tokens: int
    paths: list[PathResult]
    peer: str
    client: str = "raw"
    target_p50_ms: float = 1.5
    target_p99_ms: float = 5.0


def _request(max_tokens: int) -> CompletionRequest:
    return CompletionRequest(prompt=PROMPT, seed=1234, temperature=0.0, top_k=40, top_p=0.95,
                             min_p=0.05, repeat_penalty=1.0, max_tokens=max_tokens)


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


async def _until(resp: httpx.Response, marker: str) -> None:
    """Read a streamed body line by line until ``marker`` (and the line after it)."""
    lines = resp.aiter_lines()
    async for line in lines:
        if line.startswith(marker):
            if marker.startswith("event:"):
                await anext(lines)
            return
    raise RuntimeError(f"stream ended before {marker!r}")


class _Probes:
    """One probe per path, each returning its time in ms."""

    def __init__(self, http: httpx.AsyncClient, orch: str, upstream: str,
                 peer: tuple[str, str] | None, runs: dict[str, str], max_tokens: int,
                 alt: tuple[str, str]) -> None:
        self.http = http
        self.orch = orch
        self.alt = alt  # (url, run) of the server on the asyncio loop
        self.upstream = upstream
        self.peer = peer  # (url, bearer key)
        self.runs = runs
        self.max_tokens = max_tokens
        self.req = _request(max_tokens)
        self.handler = default_handler(length=max_tokens)

    def _step(self, model: str) -> dict[str, Any]:
        return {"type": "llm_call", "client_token": str(uuid.uuid4()),
                "input": {"model": model, "prompt": PROMPT,
                          "params": {"temperature": 0.0, "max_tokens": self.max_tokens,
                                     "seed": 1234}}}

    async def in_process(self) -> float:
        t0 = time.perf_counter_ns()
        async for item in self.handler(self.req):
            if isinstance(item, Finish):
                break
        return _ms(t0)

    async def one_trip_asyncio(self) -> float:
        return await self.one_trip(MOCK_MODEL, self.alt)

    async def one_trip(self, model: str = MOCK_MODEL,
                       where: tuple[str, str] | None = None) -> float:
        base, run = where or (self.orch, self.runs[model])
        t0 = time.perf_counter_ns()
        async with self.http.stream("POST", f"{base}/v1/runs/{run}/steps",
                                    json=self._step(model),
                                    headers={"accept": "text/event-stream"}) as resp:
            if resp.status_code != 201:
                raise RuntimeError(f"submit answered {resp.status_code}")
            await _until(resp, "event: end")
        return _ms(t0)

    async def one_trip_http(self) -> float:
        return await self.one_trip(HTTP_MODEL)

    async def two_trips(self) -> float:
        t0 = time.perf_counter_ns()
        resp = await self.http.post(f"{self.orch}/v1/runs/{self.runs[MOCK_MODEL]}/steps",
                                    json=self._step(MOCK_MODEL))
        step_id = resp.json()["step_id"]
        async with self.http.stream("GET", f"{self.orch}/v1/steps/{step_id}/stream") as s:
            await _until(s, "event: end")
        return _ms(t0)

    async def _openai(self, base: str, path: str, stream: bool, key: str = "") -> float:
        body: dict[str, Any] = {"model": HTTP_MODEL, "max_tokens": self.max_tokens,
                                "temperature": 0.0, "seed": 1234, "stream": stream}
        if path.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": PROMPT}]
        else:
            body["prompt"] = PROMPT
        headers = {"authorization": f"Bearer {key}"} if key else None
        t0 = time.perf_counter_ns()
        if not stream:
            resp = await self.http.post(base + path, json=body, headers=headers)
            resp.raise_for_status()
            return _ms(t0)
        async with self.http.stream("POST", base + path, json=body, headers=headers) as resp:
            resp.raise_for_status()
            await _until(resp, "data: [DONE]")
        return _ms(t0)

    async def direct_completions(self) -> float:
        return await self._openai(self.upstream, "/v1/completions", True)

    async def direct_chat(self) -> float:
        return await self._openai(self.upstream, "/v1/chat/completions", True)

    async def direct_chat_whole(self) -> float:
        return await self._openai(self.upstream, "/v1/chat/completions", False)

    async def litellm_stream(self) -> float:
        assert self.peer is not None
        return await self._openai(self.peer[0], "/v1/chat/completions", True, self.peer[1])

    async def litellm_whole(self) -> float:
        assert self.peer is not None
        return await self._openai(self.peer[0], "/v1/chat/completions", False, self.peer[1])


class _RawProbes(_Probes):
    """The same probes over :class:`~tools.bench.rawhttp.RawHttp` (one keep-alive
    connection per server), timed to the end of each answer's body."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conns: dict[str, RawHttp] = {}

    def _conn(self, base: str) -> RawHttp:
        if base not in self.conns:
            self.conns[base] = RawHttp(base)
        return self.conns[base]

    async def one_trip(self, model: str = MOCK_MODEL,
                       where: tuple[str, str] | None = None) -> float:
        base, run = where or (self.orch, self.runs[model])
        body = msgspec.json.encode(self._step(model))
        t0 = time.perf_counter_ns()
        resp = await self._conn(base).request(
            "POST", f"/v1/runs/{run}/steps", body,
            {"Accept": "text/event-stream"})
        ms = _ms(t0)
        if resp.status != 201 or b"event: end\n" not in resp.body:
            raise RuntimeError(f"submit answered {resp.status}: {resp.body[-200:]!r}")
        return ms

    async def two_trips(self) -> float:
        body = msgspec.json.encode(self._step(MOCK_MODEL))
        conn = self._conn(self.orch)
        t0 = time.perf_counter_ns()
        resp = await conn.request("POST", f"/v1/runs/{self.runs[MOCK_MODEL]}/steps", body)
        step_id = msgspec.json.decode(resp.body)["step_id"]
        stream = await conn.request("GET", f"/v1/steps/{step_id}/stream")
        ms = _ms(t0)
        if b"event: end\n" not in stream.body:
            raise RuntimeError(f"stream of {step_id} has no end frame")
        return ms

    async def _openai(self, base: str, path: str, stream: bool, key: str = "") -> float:
        body: dict[str, Any] = {"model": HTTP_MODEL, "max_tokens": self.max_tokens,
                                "temperature": 0.0, "seed": 1234, "stream": stream}
        if path.endswith("chat/completions"):
            body["messages"] = [{"role": "user", "content": PROMPT}]
        else:
            body["prompt"] = PROMPT
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        raw = msgspec.json.encode(body)
        t0 = time.perf_counter_ns()
        resp = await self._conn(base).request("POST", path, raw, headers)
        ms = _ms(t0)
        if resp.status != 200 or (stream and b"data: [DONE]" not in resp.body):
            raise RuntimeError(f"{base}{path} answered {resp.status}: {resp.body[-200:]!r}")
        return ms

    async def aclose(self) -> None:
        for conn in self.conns.values():
            await conn.aclose()


_PATHS: list[tuple[str, str, str]] = [
    # (name, probe, baseline name)
    ("mock engine, in-process", "in_process", ""),
    (ONE_TRIP, "one_trip", "mock engine, in-process"),
    ("orchestratord, 2 round trips (POST, GET -> end)", "two_trips",
     "mock engine, in-process"),
    ("orchestratord on asyncio's loop, 1 round trip", "one_trip_asyncio",
     "mock engine, in-process"),
    ("mock server direct, /v1/completions stream", "direct_completions", ""),
    ("orchestratord -> mock server, 1 round trip", "one_trip_http",
     "mock server direct, /v1/completions stream"),
    ("mock server direct, chat stream", "direct_chat", ""),
    ("mock server direct, chat whole", "direct_chat_whole", ""),
    ("LiteLLM proxy -> mock server, chat stream", "litellm_stream",
     "mock server direct, chat stream"),
    ("LiteLLM proxy -> mock server, chat whole", "litellm_whole",
     "mock server direct, chat whole"),
]


_PEER_GROUP = frozenset({"mock server direct, chat stream", "mock server direct, chat whole",
                         "LiteLLM proxy -> mock server, chat stream",
                         "LiteLLM proxy -> mock server, chat whole"})
"""The paths of the second block."""


async def _run(orch: str, alt: str, upstream: str, peer: tuple[str, str] | None,
               rounds: int, per_round: int, max_tokens: int, client: str,
               only: frozenset[str] | None = None) -> list[PathResult]:
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0),
                                 limits=limits) as http:
        async def new_run(base: str) -> str:
            flow = (await http.post(f"{base}/v1/flows",
                                    json={"ast_ir": {"bench": "overhead"}})).json()["flow_id"]
            run = await http.post(f"{base}/v1/flows/{flow}/runs",
                                  json={"mode": "record", "seed": 1234})
            return str(run.json()["run_id"])

        async def new_runs() -> dict[str, str]:
            return {model: await new_run(orch) for model in (MOCK_MODEL, HTTP_MODEL)}

        async def alt_run() -> tuple[str, str]:  # no second server: no asyncio row
            return (alt, await new_run(alt)) if alt else ("", "")

        kind = _RawProbes if client == "raw" else _Probes
        probes = kind(http, orch, upstream, peer, await new_runs(), max_tokens,
                      await alt_run())
        active = [(n, getattr(probes, p), b) for n, p, b in _PATHS
                  if (peer is not None or not p.startswith("litellm"))
                  and (only is None or n in only)]
        for _name, probe, _b in active:  # one warm-up each, not counted
            await probe()
        samples: dict[str, list[list[float]]] = {n: [] for n, _p, _b in active}
        groups = [[a for a in active if a[0] not in _PEER_GROUP],
                  [a for a in active if a[0] in _PEER_GROUP]]
        for group in [g for g in groups if g]:  # the peer's block after orchestratord's
            for _r in range(rounds):
                for name, _p, _b in group:
                    samples[name].append([])
                for i in range(per_round):  # rotated, so each path follows each other
                    for name, probe, _b in group[i % len(group):] + group[:i % len(group)]:
                        samples[name][-1].append(await probe())
                probes.runs = await new_runs()  # Runs stay small (50 Steps or so)
                probes.alt = await alt_run()
        if isinstance(probes, _RawProbes):
            await probes.aclose()
    stats = {n: summarise(s) for n, s in samples.items()}
    out = []
    for name, _p, base in active:
        st = stats[name]
        if base:
            out.append(PathResult(name, st, base, round(st.p50_ms - stats[base].p50_ms, 3),
                                  round(st.p99_ms - stats[base].p99_ms, 3)))
        else:
            out.append(PathResult(name, st))
    return out


def http_pool(upstream: str, slots: int = 8, *, batch_invariant: bool = False) -> PoolConfig:
    """The ``http-0`` pool: one remote replica, the mock server at ``upstream``.

    Args:
        upstream: the mock server's base URL (:mod:`tools.bench.mock_openai`).
        slots: its ``slots_per_replica``.
        batch_invariant: declare the engine batch-invariant (the mock is: each request is
            seeded on its own), so that all ``slots`` serve record Steps at once; otherwise
            a replica serves one record Step at a time (PLACE-5005).

    Returns:
        An ``openai_http`` pool, dialect ``llama-server``, serving :data:`HTTP_MODEL`.
    """
    options: dict[str, Any] = {"dialect": "llama-server"}
    if batch_invariant:
        options["batch_invariant"] = True
    return PoolConfig(pool_id="http-0", engine="openai_http",
                      models=[ModelConfig(id=HTTP_MODEL, context_tokens=4096)],
                      slots_per_replica=slots, options=options, urls=[upstream])


def llm_call_added(orch: str, *, rounds: int = 5, per_round: int = 20,
                   max_tokens: int = 8) -> PathResult:
    """The added latency per ``llm_call`` on a running orchestratord, alone: the
    :data:`ONE_TRIP` path against its baseline, alternated request by request, as
    :func:`measure` times them (the raw client, to the end of each answer).

    Args:
        orch: the server's base URL; its ``mock:echo-1`` model must be the mock engine
            with its default options (as :func:`~orchestrator_core.config.mock_config`
            gives), so that it produces what the in-process baseline does.
        rounds / per_round: R rounds of K requests per path.
        max_tokens: tokens per request.

    Returns:
        The one-round-trip path, with ``added_p50_ms`` and ``added_p99_ms`` (ms).

    Raises:
        RuntimeError: a request was not answered ``201`` with an ``end`` frame.
    """
    paths = asyncio.run(_run(orch, "", "", None, rounds, per_round, max_tokens, "raw",
                             only=frozenset({ONE_TRIP, "mock engine, in-process"})))
    return next(p for p in paths if p.name == ONE_TRIP)


def _orch_config(data_dir: str, upstream: str) -> ServerConfig:
    cfg = mock_config(data_dir=data_dir)
    return msgspec.structs.replace(cfg, pools=[*cfg.pools, http_pool(upstream)])


def measure(work_dir: pathlib.Path, *, rounds: int = 10, per_round: int = 40,
            max_tokens: int = 8, peer: bool = True, client: str = "raw") -> OverheadReport:
    """Start the mock server, orchestratord and (if it installs) LiteLLM; measure.

    Args:
        work_dir: configs, logs and the orchestratord data directory go here.
        rounds / per_round: R rounds of K requests per path, alternated.
        max_tokens: tokens per request.
        peer: measure LiteLLM too.
        client: ``raw`` (:class:`~tools.bench.rawhttp.RawHttp`, timed to the end of each
            answer) or ``httpx`` (timed to the last frame).
    """
    mock, upstream = spawn_mock()
    orch_proc = alt_proc = None
    try:
        cfg_path = work_dir / "orchestratord.json"
        (work_dir / "orch").mkdir(parents=True, exist_ok=True)
        cfg_path.write_bytes(msgspec.json.encode(_orch_config(str(work_dir / "orch"),
                                                              upstream)))
        orch_proc, orch = start_server(data_dir=str(work_dir / "orch"),
                                       extra=["--config", str(cfg_path)])
        (work_dir / "orch-asyncio").mkdir(parents=True, exist_ok=True)
        alt_proc, alt = start_server(data_dir=str(work_dir / "orch-asyncio"),
                                     extra=["--config", str(cfg_path), "--loop", "asyncio"])
        venv, version = ensure_litellm() if peer else (None, "not asked for (--no-peer)")
        if venv is None:
            print(version, file=sys.stderr, flush=True)
            paths = asyncio.run(_run(orch, alt, upstream, None, rounds, per_round,
                                     max_tokens, client))
            return OverheadReport(rounds, per_round, max_tokens, paths, version, client)
        with LiteLLMProxy(venv, upstream, HTTP_MODEL, work_dir / "litellm") as proxy:
            paths = asyncio.run(_run(orch, alt, upstream, (proxy.url, proxy.key), rounds,
                                     per_round, max_tokens, client))
        return OverheadReport(rounds, per_round, max_tokens, paths,
                              f"litellm {version} ({LITELLM_SPEC})", client)
    finally:
        for proc in (orch_proc, alt_proc):
            if proc is not None:
                stop_server(proc)
        mock.terminate()
        mock.wait(timeout=10)


def render_text(report: OverheadReport) -> str:
    """The paths as a table (ms), added latency beside the paths that have a baseline."""
    lines = [
        f"added latency per llm_call: {report.rounds} rounds x {report.per_round} requests "
        f"per path, alternating, {report.max_tokens} tokens, prompt {PROMPT!r}",
        f"peer: {report.peer}; client: {report.client}",
        "",
        f"   {'path':<50}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>10}{'+p99 ms':>10}",
    ]
    for p in report.paths:
        added = (f"{p.added_p50_ms:>10.3f}{p.added_p99_ms:>10.3f}"
                 if p.added_p50_ms is not None and p.added_p99_ms is not None else "")
        lines.append(f"   {p.name:<50}{p.stats.p50_ms:>9.3f}{p.stats.p99_ms:>9.3f}{added}")
    one = next(p for p in report.paths if p.name == ONE_TRIP)
    ok = (one.added_p50_ms or 0) <= report.target_p50_ms and \
        (one.added_p99_ms or 0) <= report.target_p99_ms
    lines += [
        "",
        "   +p50/+p99: minus the path's baseline (in-process mock engine for the first three "
        "orchestratord rows, the same request sent to the mock server for the others)",
        "   p50 = median of per-round medians; p99 = nearest rank over all samples",
        f"   target for orchestratord, 1 round trip: +p50 <= {report.target_p50_ms} ms, "
        f"+p99 <= {report.target_p99_ms} ms: {'met' if ok else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure and print; returns 0 (figures are reported whether or not they meet the
    target)."""
    p = argparse.ArgumentParser(prog="python -m tools.bench.overhead",
                                description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=10, help="rounds R (default 10)")
    p.add_argument("--per-round", type=int, default=40,
                   help="requests per path per round K (default 40)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens per request (default 8)")
    p.add_argument("--no-peer", action="store_true", help="skip LiteLLM")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="the bench's HTTP client (default raw: a minimal keep-alive "
                        "HTTP/1.1 client, so that the client's own cost stays small)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if min(args.rounds, args.per_round, args.max_tokens) < 1:
        p.error("--rounds, --per-round and --max-tokens must be at least 1")
    with tempfile.TemporaryDirectory(prefix="orchestratord-overhead-") as tmp:
        report = measure(pathlib.Path(tmp), rounds=args.rounds, per_round=args.per_round,
                         max_tokens=args.max_tokens, peer=not args.no_peer,
                         client=args.client)
    print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode() if args.json
          else render_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
