"""Streaming cost of a real server process: RSS per SSE subscriber, CPU per streamed token.

Run as ``python -m tools.bench.streams [--json]``. Both measurements start their own
``orchestratord`` app on Granian in a child process (as ``orchestratord serve`` does)
with an in-process mock engine whose Steps are exactly ``max_tokens`` tokens long; the
``mock`` pool config only takes ``tokens_per_s``, so the child builds its engines with
an engine factory. Readers are plain loopback sockets in this process, so their work is
not charged to the server.

1. **RSS per subscriber**: one Step decodes slowly for the whole measurement; the
   server's ``VmRSS`` is read with no subscriber, then with N (default 500) attached and
   reading, and again after they disconnected. The figure is
   ``(rss_N - rss_0) / N`` in KiB.
2. **CPU per streamed token**: S (default 16) concurrent Steps of T (default 2,000)
   tokens on a mock engine running as fast as it can, each with one SSE reader; the
   server's CPU time (``utime + stime`` of ``/proc/<pid>/stat``, every thread) over the
   whole run, divided by the tokens streamed, in µs. The same run with no reader
   (engine, group commits and SQLite only; completion found by polling the Run) shows
   what streaming adds. Rounds alternate the two modes; medians are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import msgspec

from orchestrator_core.config import PoolConfig, ServerConfig, mock_config
from tools.servers import stop_server
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter
from worker_adapters.mock import MockEngine, default_handler

__all__ = [
    "CpuReport",
    "CpuRound",
    "RssReport",
    "ServerProcess",
    "StreamsReport",
    "main",
    "measure_cpu",
    "measure_rss",
    "parse_args",
    "render_text",
    "serve",
]

_REPO = pathlib.Path(__file__).resolve().parents[2]
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_CONTEXT_TOKENS = 10_000_000
_SUBSCRIBERS_RE = re.compile(r"^orchestrator_sse_subscribers ([0-9.e+]+)$", re.M)
_TARGET_KIB_PER_SUBSCRIBER = 50.0
_TARGET_US_PER_TOKEN = 8.0
"""Issue 11: server CPU per streamed token at 16 streams, in total (µs)."""


# -- the server process ----------------------------------------------------------------


def _length_is_max_tokens(pool: PoolConfig, index: int) -> EngineAdapter:
    """Engine factory of the child: the default mock handler with ``length = max_tokens``.

    Args:
        pool: the pool config; ``options["tokens_per_s"]`` is the decode speed
            (tokens/s, 0 = as fast as possible).
        index: replica index (unused).
    """
    tokens_per_s = float(pool.options.get("tokens_per_s", 0))
    return MockEngine(lambda req: default_handler(tokens_per_s, length=req.max_tokens)(req))


def serve(config_path: str) -> None:
    """Child process entry: serve the app on Granian, as ``orchestratord serve`` does.

    Args:
        config_path: JSON :class:`ServerConfig` (host, port, data_dir, the mock pool).
    """
    from orchestratord.cli import serve as serve_config
    from worker_adapters.registry import default_drivers

    config = msgspec.json.decode(pathlib.Path(config_path).read_bytes(), type=ServerConfig)
    serve_config(config, drivers=default_drivers(mock_factory=_length_is_max_tokens))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A Granian server process with a mock pool of one replica.

    Args:
        data_dir: store, config and ``server.log`` go here.
        tokens_per_s: mock decode speed per Step (tokens/s; 0 = as fast as possible).
        slots: concurrent Steps the replica runs.
    """

    def __init__(self, data_dir: pathlib.Path, *, tokens_per_s: float, slots: int) -> None:
        cfg = mock_config(data_dir=str(data_dir), port=_free_port(), replicas=1,
                          slots_per_replica=slots, mock_options={"tokens_per_s": tokens_per_s})
        pool = cfg.pools[0]
        model = msgspec.structs.replace(pool.models[0], context_tokens=_CONTEXT_TOKENS)
        self.config = msgspec.structs.replace(
            cfg, pools=[msgspec.structs.replace(pool, models=[model], queue_capacity=1024)])
        self.data_dir = data_dir
        self.url = f"http://{self.config.host}:{self.config.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the child and wait until ``GET /ready`` answers 200.

        Args:
            timeout_s: how long to wait for readiness (s).

        Raises:
            RuntimeError: the server exited or did not get ready in time.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.data_dir / "config.json"
        cfg_path.write_bytes(msgspec.json.encode(self.config))
        code = "import sys; from tools.bench.streams import serve; serve(sys.argv[1])"
        with open(self.data_dir / "server.log", "ab") as log:  # the child keeps a dup
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(cfg_path)],
                                         cwd=_REPO, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env={**os.environ})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.data_dir}/server.log")
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready; see {self.data_dir}/server.log")

    def stop(self) -> None:
        """SIGTERM the server and wait for it (SIGKILL after 20 s)."""
        if self.proc is not None and self.proc.poll() is None:
            stop_server(self.proc)

    def rss_kib(self) -> int:
        """Resident set size now (KiB), ``VmRSS`` of ``/proc/<pid>/status``."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def cpu_s(self) -> float:
        """CPU time used so far by every thread, ``utime + stime`` (s)."""
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK


@contextlib.contextmanager
def _running(data_dir: pathlib.Path, *, tokens_per_s: float, slots: int) -> \
        Iterator[ServerProcess]:
    server = ServerProcess(data_dir, tokens_per_s=tokens_per_s, slots=slots)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- clients ---------------------------------------------------------------------------


async def _new_run(http: httpx.AsyncClient) -> str:
    flow = (await http.post("/v1/flows", json={"ast_ir": {"bench": "streams"}})).json()
    run = (await http.post(f"/v1/flows/{flow['flow_id']}/runs", json={})).json()
    run_id: str = run["run_id"]
    return run_id


async def _submit(http: httpx.AsyncClient, run_id: str, token: str, tokens: int) -> str:
    body = {"type": "llm_call", "client_token": token,
            "input": {"model": "mock:echo-1", "prompt": "a long story",
                      "params": {"max_tokens": tokens}}}
    resp = await http.post(f"/v1/runs/{run_id}/steps", json=body)
    if resp.status_code != 201:
        raise RuntimeError(f"submit failed: {resp.status_code} {resp.text}")
    step_id: str = resp.json()["step_id"]
    return step_id


@contextlib.asynccontextmanager
async def _sse_socket(url: str, step_id: str) -> \
        AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A loopback socket with ``GET /v1/steps/{id}/stream`` sent (``Connection: close``)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /v1/steps/{step_id}/stream HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _read_to_end(url: str, step_id: str) -> int:
    """Read a Step's SSE response to EOF.

    Returns:
        ``token`` frames received.
    """
    pattern = b"event: token\n"
    tokens = 0
    tail = b""
    async with _sse_socket(url, step_id) as (reader, _writer):
        while chunk := await reader.read(1 << 16):
            data = tail + chunk
            tokens += data.count(pattern)  # the tail is too short to hold a whole match
            tail = data[-(len(pattern) - 1):]
    return tokens


async def _hold_open(url: str, step_id: str, received: list[int]) -> None:
    """Stay subscribed, reading and discarding, until cancelled; count bytes received."""
    async with _sse_socket(url, step_id) as (reader, _writer):
        while chunk := await reader.read(1 << 16):
            received[0] += len(chunk)


async def _subscribers(http: httpx.AsyncClient) -> int:
    m = _SUBSCRIBERS_RE.search((await http.get("/metrics")).text)
    return int(float(m.group(1))) if m else 0


async def _wait_until(http: httpx.AsyncClient, path: str, key: str, value: str,
                      timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await http.get(path)).json()[key] != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path}: {key} never became {value}")
        await asyncio.sleep(0.02)


async def _rss_median(server: ServerProcess, samples: int = 5, every_s: float = 0.1) -> int:
    values = []
    for _ in range(samples):
        values.append(server.rss_kib())
        await asyncio.sleep(every_s)
    return int(statistics.median(values))


# -- measurement 1: RSS per subscriber -------------------------------------------------


class RssReport(msgspec.Struct, frozen=True):
    """Server memory with and without subscribers on one live Step.

    Attributes:
        subscribers: N, readers attached at once.
        tokens_per_s: decode speed of the Step they read (tokens/s).
        rss_0_kib: server RSS with the Step running and no reader (KiB, median of 5).
        rss_n_kib: server RSS with N readers attached and reading (KiB, median of 5).
        rss_after_kib: server RSS after the readers disconnected (KiB, median of 5).
        kib_per_subscriber: ``(rss_n - rss_0) / N`` (KiB).
        attach_s: time for all N readers to be counted as subscribers (s).
        kib_per_idle_connection: the same figure for N keep-alive connections that made
            one ``GET /health`` and no stream, on another fresh server process: the part
            of a subscriber's cost that any HTTP connection has (KiB).
        target_kib_per_subscriber: the goal (KiB).
    """

    subscribers: int
    tokens_per_s: float
    rss_0_kib: int
    rss_n_kib: int
    rss_after_kib: int
    kib_per_subscriber: float
    attach_s: float
    kib_per_idle_connection: float
    target_kib_per_subscriber: float = _TARGET_KIB_PER_SUBSCRIBER


async def _idle_connection(url: str, answered: list[int], release: asyncio.Event) -> None:
    """Make one ``GET /health`` on a keep-alive connection, then hold it until released;
    count the answer in ``answered[0]``."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET /health HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"}")  # the whole small JSON body
        answered[0] += 1
        await release.wait()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _measure_idle_connections(server: ServerProcess, connections: int,
                                    settle_s: float) -> float:
    """RSS cost of ``connections`` idle keep-alive connections (KiB each)."""
    await asyncio.sleep(settle_s)
    rss_0 = await _rss_median(server)
    release = asyncio.Event()
    answered = [0]
    tasks = [asyncio.create_task(_idle_connection(server.url, answered, release))
             for _ in range(connections)]
    try:
        deadline = time.monotonic() + 30.0
        while answered[0] < connections:
            if any(t.done() for t in tasks) or time.monotonic() > deadline:
                raise RuntimeError(f"only {answered[0]} of {connections} connections answered")
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle_s)
        rss_n = await _rss_median(server)
    finally:
        release.set()
        await asyncio.gather(*tasks)
    return round((rss_n - rss_0) / connections, 2)


async def _measure_rss(server: ServerProcess, subscribers: int, tokens_per_s: float,
                       settle_s: float, kib_per_idle_connection: float) -> RssReport:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
        run_id = await _new_run(http)
        step_id = await _submit(http, run_id, "rss-long", _CONTEXT_TOKENS // 2)
        await _wait_until(http, f"/v1/steps/{step_id}", "status", "running", 30.0)
        await asyncio.sleep(settle_s)
        rss_0 = await _rss_median(server)
        received = [0]
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(_hold_open(server.url, step_id, received))
                 for _ in range(subscribers)]
        try:
            while await _subscribers(http) < subscribers:
                if any(t.done() for t in tasks):
                    raise RuntimeError("a subscriber ended early")
                await asyncio.sleep(0.05)
            attach_s = time.perf_counter() - t0
            await asyncio.sleep(settle_s)
            rss_n = await _rss_median(server)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        deadline = time.monotonic() + 30.0
        while await _subscribers(http) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("subscribers were not released within 30 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle_s)
        rss_after = await _rss_median(server)
        await http.post(f"/v1/steps/{step_id}/cancel")
    return RssReport(subscribers=subscribers, tokens_per_s=tokens_per_s, rss_0_kib=rss_0,
                     rss_n_kib=rss_n, rss_after_kib=rss_after,
                     kib_per_subscriber=round((rss_n - rss_0) / subscribers, 2),
                     attach_s=round(attach_s, 3),
                     kib_per_idle_connection=kib_per_idle_connection)


def measure_rss(data_dir: pathlib.Path, subscribers: int = 500, tokens_per_s: float = 5.0,
                settle_s: float = 1.0) -> RssReport:
    """Measurement 1, on two fresh server processes (idle connections, then subscribers).

    Args:
        data_dir: where the servers keep their stores and logs.
        subscribers: N readers attached at once (and N idle connections).
        tokens_per_s: decode speed of the long Step they read (tokens/s).
        settle_s: pause before each RSS reading (s).
    """
    with _running(data_dir / "idle", tokens_per_s=tokens_per_s, slots=1) as server:
        per_connection = asyncio.run(_measure_idle_connections(server, subscribers,
                                                               settle_s))
    with _running(data_dir / "subscribers", tokens_per_s=tokens_per_s, slots=1) as server:
        return asyncio.run(_measure_rss(server, subscribers, tokens_per_s, settle_s,
                                        per_connection))


# -- measurement 2: CPU per streamed token ---------------------------------------------


class CpuRound(msgspec.Struct, frozen=True):
    """One run of S concurrent Steps.

    Attributes:
        readers: True when every Step had one SSE reader.
        tokens: tokens generated over all Steps (token frames read, with readers).
        cpu_s: server CPU time over the run, every thread (s).
        wall_s: first submission to the last Step's end (s).
        us_per_token: ``cpu_s / tokens`` (µs).
    """

    readers: bool
    tokens: int
    cpu_s: float
    wall_s: float
    us_per_token: float


class CpuReport(msgspec.Struct, frozen=True):
    """Server CPU per streamed token.

    Attributes:
        streams: S, concurrent Steps.
        tokens_per_step: T, tokens per Step.
        clock_tick_s: resolution of the CPU readings (s).
        with_readers_us_per_token: median over rounds, one reader per Step (µs).
        without_readers_us_per_token: median over rounds, no reader (µs).
        streaming_us_per_token: the difference, what SSE delivery adds (µs).
        rounds: every round, in the order run.
        target_us_per_token: the goal with readers (µs).
        engine_us_per_token: the mock engine alone: S concurrent streams of T tokens
            iterated in the bench process, its CPU per token (µs, median of 3).
        log_us_per_token: ``without_readers - engine``: the Step's loop, its durable
            rows and their group commits, admission and HTTP spread over the tokens (µs).
    """

    streams: int
    tokens_per_step: int
    clock_tick_s: float
    with_readers_us_per_token: float
    without_readers_us_per_token: float
    streaming_us_per_token: float
    rounds: list[CpuRound]
    target_us_per_token: float = _TARGET_US_PER_TOKEN
    engine_us_per_token: float = 0.0
    log_us_per_token: float = 0.0


async def _engine_alone(streams: int, tokens: int) -> float:
    """CPU per token of S concurrent mock streams of T tokens, in this process (µs)."""
    engine = _length_is_max_tokens(PoolConfig(pool_id="p", engine="mock", models=[]), 0)
    req = CompletionRequest(prompt="a long story", seed=0, temperature=0.0, top_k=40,
                            top_p=0.95, min_p=0.05, repeat_penalty=1.0, max_tokens=tokens)

    async def one() -> int:
        return sum([1 async for item in engine.stream(req) if isinstance(item, Delta)])

    c0 = time.thread_time()
    n = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return (time.thread_time() - c0) / n * 1e6


async def _cpu_round(server: ServerProcess, http: httpx.AsyncClient, label: str,
                     streams: int, tokens: int, readers: bool) -> CpuRound:
    run_id = await _new_run(http)
    cpu0, t0 = server.cpu_s(), time.perf_counter()

    async def one(i: int) -> int:
        step_id = await _submit(http, run_id, f"{label}-{i}", tokens)
        return await _read_to_end(server.url, step_id) if readers else 0

    streamed = await asyncio.gather(*(one(i) for i in range(streams)))
    if readers:
        total = sum(streamed)
    else:
        await _wait_until_all_succeeded(http, run_id, streams)
        total = (await http.get(f"/v1/runs/{run_id}")).json()["usage"]["tokens_out"]
    cpu_s, wall_s = server.cpu_s() - cpu0, time.perf_counter() - t0
    if total != streams * tokens:
        raise RuntimeError(f"{label}: {total} tokens, expected {streams * tokens}")
    return CpuRound(readers=readers, tokens=total, cpu_s=round(cpu_s, 3),
                    wall_s=round(wall_s, 3), us_per_token=round(cpu_s / total * 1e6, 3))


async def _wait_until_all_succeeded(http: httpx.AsyncClient, run_id: str, steps: int,
                                    timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await http.get(f"/v1/runs/{run_id}")).json()["steps"].get("succeeded", 0) < steps:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id}: steps did not finish in {timeout_s} s")
        await asyncio.sleep(0.02)


async def _measure_cpu(server: ServerProcess, streams: int, tokens: int,
                       rounds: int) -> CpuReport:
    limits = httpx.Limits(max_connections=streams * 2, max_keepalive_connections=streams * 2)
    async with httpx.AsyncClient(base_url=server.url, timeout=120.0, limits=limits) as http:
        await _cpu_round(server, http, "warm-r", streams, max(tokens // 10, 1), True)
        await _cpu_round(server, http, "warm-n", streams, max(tokens // 10, 1), False)
        done: list[CpuRound] = []
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for readers in order:
                done.append(await _cpu_round(server, http, f"r{r}-{int(readers)}", streams,
                                             tokens, readers))
    with_r = statistics.median(c.us_per_token for c in done if c.readers)
    without = statistics.median(c.us_per_token for c in done if not c.readers)
    engine = statistics.median([await _engine_alone(streams, tokens) for _ in range(3)])
    return CpuReport(streams=streams, tokens_per_step=tokens, clock_tick_s=1 / _CLK_TCK,
                     with_readers_us_per_token=round(with_r, 3),
                     without_readers_us_per_token=round(without, 3),
                     streaming_us_per_token=round(with_r - without, 3), rounds=done,
                     engine_us_per_token=round(engine, 3),
                     log_us_per_token=round(without - engine, 3))


def measure_cpu(data_dir: pathlib.Path, streams: int = 16, tokens: int = 2000,
                rounds: int = 3) -> CpuReport:
    """Measurement 2 on a fresh server process (mock engine as fast as possible).

    Args:
        data_dir: where the server keeps its store and log.
        streams: S, concurrent Steps (the replica gets S slots).
        tokens: T, tokens per Step.
        rounds: rounds of each mode, alternating; one short warm-up of each comes first.
    """
    with _running(data_dir, tokens_per_s=0, slots=streams) as server:
        return asyncio.run(_measure_cpu(server, streams, tokens, rounds))


# -- report ----------------------------------------------------------------------------


class StreamsReport(msgspec.Struct, frozen=True):
    """Everything one run measured.

    Attributes:
        cpus: CPUs online on this machine (server and readers share them).
        rss: measurement 1 (None with ``--only cpu``).
        cpu: measurement 2 (None with ``--only rss``).
    """

    cpus: int
    rss: RssReport | None = None
    cpu: CpuReport | None = None


def _verdict(ok: bool) -> str:
    return "meets target" if ok else "ABOVE target"


def render_text(report: StreamsReport) -> str:
    """Human-readable report (KiB, µs, s)."""
    rss, cpu = report.rss, report.cpu
    lines = [
        f"orchestratord streaming cost  (Granian server process, mock engine, "
        f"{report.cpus} CPUs shared with the readers)",
    ]
    if rss is not None:
        lines += ["", *_rss_lines(rss)]
    if cpu is not None:
        lines += ["", *_cpu_lines(cpu)]
    return "\n".join(lines)


def _rss_lines(rss: RssReport) -> list[str]:
    return [
        f"1) RSS per SSE subscriber: {rss.subscribers} readers on one live step "
        f"({rss.tokens_per_s:g} tokens/s)",
        f"   server RSS, 0 subscribers            {rss.rss_0_kib:>10,} KiB",
        f"   server RSS, {f'{rss.subscribers} subscribers':<25}{rss.rss_n_kib:>10,} KiB"
        f"   (all attached in {rss.attach_s:.2f} s)",
        f"   server RSS, after they disconnected  {rss.rss_after_kib:>10,} KiB",
        f"   per subscriber                       {rss.kib_per_subscriber:>10.1f} KiB"
        f"   target <= {rss.target_kib_per_subscriber:g} KiB: "
        f"{_verdict(rss.kib_per_subscriber <= rss.target_kib_per_subscriber)}",
        f"   an idle HTTP connection alone        {rss.kib_per_idle_connection:>10.1f} KiB"
        f"   ({rss.subscribers} idle keep-alive connections, fresh server)",
    ]


def _cpu_lines(cpu: CpuReport) -> list[str]:
    lines = [
        f"2) server CPU per streamed token: {cpu.streams} concurrent steps x "
        f"{cpu.tokens_per_step:,} tokens, mock engine as fast as possible",
        f"   (CPU = utime + stime of every server thread, clock tick "
        f"{cpu.clock_tick_s * 1000:g} ms; median of {len(cpu.rounds) // 2} rounds)",
        f"   one SSE reader per step        {cpu.with_readers_us_per_token:>8.2f} µs/token"
        f"   target <= {cpu.target_us_per_token:g} µs: "
        f"{_verdict(cpu.with_readers_us_per_token <= cpu.target_us_per_token)}",
        f"   no reader (engine + log only)  {cpu.without_readers_us_per_token:>8.2f} µs/token",
        f"   breakdown: mock engine alone   {cpu.engine_us_per_token:>8.2f} µs/token"
        "   (same streams iterated in the bench process)",
        f"              step loop + log     {cpu.log_us_per_token:>8.2f} µs/token"
        "   (no reader - engine: frames, group commits, SQLite)",
        f"              SSE delivery        {cpu.streaming_us_per_token:>8.2f} µs/token"
        "   (one reader - no reader)",
        "",
        f"   {'round':<8}{'readers':>8}{'tokens':>9}{'cpu s':>9}{'wall s':>9}{'µs/token':>10}"
        f"{'tokens/s':>10}",
    ]
    for i, c in enumerate(cpu.rounds):
        lines.append(f"   {i + 1:<8}{'yes' if c.readers else 'no':>8}{c.tokens:>9,}"
                     f"{c.cpu_s:>9.2f}{c.wall_s:>9.2f}{c.us_per_token:>10.2f}"
                     f"{c.tokens / c.wall_s:>10,.0f}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench.streams",
        description="RSS per SSE subscriber and server CPU per streamed token, measured "
                    "on a real Granian server process with the mock engine.")
    p.add_argument("--subscribers", type=int, default=500,
                   help="readers attached at once for the RSS figure (default 500)")
    p.add_argument("--streams", type=int, default=16,
                   help="concurrent steps for the CPU figure (default 16)")
    p.add_argument("--tokens", type=int, default=2000,
                   help="tokens per step for the CPU figure (default 2000)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds of each CPU mode, alternating (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--only", choices=("rss", "cpu"), default=None,
                   help="run one measurement only")
    args = p.parse_args(argv)
    if min(args.subscribers, args.streams, args.tokens, args.rounds) < 1:
        p.error("--subscribers, --streams, --tokens and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both measurements, each on its own server process, and print them.

    Returns:
        0 (the figures are reported whether or not they meet their targets).
    """
    args = parse_args(argv)
    rss = cpu = None
    with tempfile.TemporaryDirectory(prefix="orchestratord-streams-") as tmp:
        if args.only != "cpu":
            if not args.json:
                print(f"measuring RSS with {args.subscribers} subscribers...",
                      file=sys.stderr, flush=True)
            rss = measure_rss(pathlib.Path(tmp) / "rss", args.subscribers)
        if args.only != "rss":
            if not args.json:
                print(f"measuring CPU at {args.streams} streams...", file=sys.stderr,
                      flush=True)
            cpu = measure_cpu(pathlib.Path(tmp) / "cpu", args.streams, args.tokens,
                              args.rounds)
    report = StreamsReport(cpus=os.cpu_count() or 1, rss=rss, cpu=cpu)
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        print(render_text(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
