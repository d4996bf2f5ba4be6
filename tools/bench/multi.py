"""``python -m tools.bench.multi``: several orchestratord processes over one PostgreSQL
(issue 16; PG-9103).

Two measurements, on a throwaway cluster (:mod:`tools.pg_cluster`) and the mock engine:

1. **cross-process delivery latency**: a Step runs on process A (the mock at 50 tokens/s,
   40 tokens); one reader on A and one on B stream it at once; for every token frame the
   added latency is the time it reached B's reader minus the time it reached A's (ms, p50
   and p99 over every token of ``--steps`` Steps). B's reader is woken by A's commit
   through ``LISTEN/NOTIFY`` and reads the frames from the database.
2. **durable steps per second**: 32 clients, each submitting 4-token ``llm_call`` Steps and
   reading each stream to its terminal frame, spread round-robin over 1, 2 and 3 processes
   on PostgreSQL, and over 1 process on SQLite, for ``--seconds`` each.

All the figures come from one run and are printed side by side (``--json``: as JSON).
Numbers on a shared 2-core machine are noisy: compare them within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec

from orchestrator_core.config import mock_config
from tools import pg_cluster
from tools.servers import start_server, stop_server

from .stats import percentile

__all__ = ["MultiReport", "main", "measure"]


class MultiReport(msgspec.Struct, frozen=True):
    """What :func:`measure` found.

    Attributes:
        delivery_p50_ms / delivery_p99_ms: added latency of a token read on B over the
            same token read on A, the process running the Step (ms).
        tokens_measured: token frames behind those percentiles.
        steps_per_s: ``"pg-1"``, ``"pg-2"``, ``"pg-3"``, ``"sqlite-1"`` -> durable Steps
            completed per second (32 clients, 4-token Steps).
    """

    delivery_p50_ms: float
    delivery_p99_ms: float
    tokens_measured: int
    steps_per_s: dict[str, float]


@contextmanager
def _servers(n: int, *, dsn: str | None, schema: str, options: dict[str, Any],
             work: pathlib.Path) -> Iterator[list[str]]:
    cfg = mock_config(mock_options=options)
    path = work / f"{schema}.json"
    path.write_bytes(msgspec.json.encode(cfg))
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for i in range(n):
            data = work / f"{schema}-{i}"
            data.mkdir()
            extra = ["--config", str(path)]
            if dsn is not None:
                extra += ["--store", dsn, "--store-schema", schema]
            proc, url = start_server(data_dir=str(data), extra=extra)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            stop_server(proc)


def _new_run(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"bench": "multi"}}).json()
        return str(http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
            "run_id"])


def _arrivals(url: str, step_id: str, out: dict[int, float]) -> None:
    """Stream a Step; the monotonic time each token frame's id arrived."""
    with httpx.Client(base_url=url, timeout=60.0) as http, \
            http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        buf = b""
        for chunk in s.iter_raw():
            now = time.monotonic()
            buf += chunk
            *blocks, buf = buf.split(b"\n\n")
            for block in blocks:
                if b"event: token" in block and block.startswith(b"id: "):
                    out[int(block.split(b"\n", 1)[0][4:])] = now


def delivery(a: str, b: str, steps: int) -> list[float]:
    """Added delivery latency on B of every token of ``steps`` Steps run on A (ms)."""
    run_id = _new_run(a)
    added: list[float] = []
    for i in range(steps):
        with httpx.Client(base_url=a, timeout=30.0) as http:
            step_id = http.post(f"/v1/runs/{run_id}/steps", json={
                "type": "llm_call", "client_token": f"lat-{i}",
                "input": {"model": "mock:echo-1", "prompt": f"latency {i}"}}).json()["step_id"]
        on_a: dict[int, float] = {}
        on_b: dict[int, float] = {}
        readers = [threading.Thread(target=_arrivals, args=(u, step_id, d))
                   for u, d in ((a, on_a), (b, on_b))]
        for t in readers:
            t.start()
        for t in readers:
            t.join()
        added += [(on_b[k] - on_a[k]) * 1000.0 for k in on_a if k in on_b]
    return added


async def _throughput(urls: Sequence[str], seconds: float, clients: int = 32) -> float:
    run_ids = [_new_run(u) for u in urls]
    done = 0
    stop = time.monotonic() + seconds

    async def client(c: int) -> None:
        nonlocal done
        url, run_id = urls[c % len(urls)], run_ids[c % len(urls)]
        async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
            i = 0
            while time.monotonic() < stop:
                resp = await http.post(f"/v1/runs/{run_id}/steps", json={
                    "type": "llm_call", "client_token": f"tp-{c}-{i}",
                    "input": {"model": "mock:echo-1", "prompt": f"step {c} {i}"}})
                i += 1
                async with http.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream"
                                       ) as s:
                    body = b"".join([chunk async for chunk in s.aiter_raw()])
                if b"event: end" in body and time.monotonic() < stop:
                    done += 1

    start = time.monotonic()
    await asyncio.gather(*(client(c) for c in range(clients)))
    return done / max(1e-9, min(seconds, time.monotonic() - start))


def measure(work: pathlib.Path, *, steps: int = 10, seconds: float = 5.0) -> MultiReport:
    """Start a cluster and the servers; measure (see the module docstring).

    Args:
        work: an empty directory for data dirs and configs.
        steps: Steps of the latency measurement.
        seconds: length of each throughput measurement (s).

    Returns:
        The report.

    Raises:
        pg_cluster.PgBinariesMissing: no PostgreSQL server binaries.
    """
    db = pathlib.Path(tempfile.mkdtemp(prefix="orch-bench-db-"))
    dsn = pg_cluster.start_cluster(db)
    try:
        with _servers(2, dsn=dsn, schema="lat", work=work,
                      options={"tokens_per_s": 50, "length": 40}) as (a, b):
            added = delivery(a, b, steps)
        rates: dict[str, float] = {}
        for n in (1, 2, 3):
            with _servers(n, dsn=dsn, schema=f"tp{n}", work=work,
                          options={"length": 4}) as urls:
                rates[f"pg-{n}"] = asyncio.run(_throughput(urls, seconds))
        with _servers(1, dsn=None, schema="sqlite", work=work, options={"length": 4}) as urls:
            rates["sqlite-1"] = asyncio.run(_throughput(urls, seconds))
    finally:
        pg_cluster.stop_cluster(db)
    return MultiReport(delivery_p50_ms=round(percentile(added, 50), 2),
                       delivery_p99_ms=round(percentile(added, 99), 2),
                       tokens_measured=len(added),
                       steps_per_s={k: round(v, 1) for k, v in rates.items()})


def main(argv: list[str] | None = None) -> int:
    """Run :func:`measure` and print the report.

    Args:
        argv: ``[--steps N] [--seconds S] [--json]``.

    Returns:
        0.
    """
    p = argparse.ArgumentParser(prog="python -m tools.bench.multi", description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orch-bench-multi-") as work:
        report = measure(pathlib.Path(work), steps=args.steps, seconds=args.seconds)
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        return 0
    print(f"cross-process delivery (token on B after A): p50 {report.delivery_p50_ms} ms, "
          f"p99 {report.delivery_p99_ms} ms over {report.tokens_measured} tokens")
    print("durable steps/s (32 clients, 4-token steps): " + ", ".join(
        f"{k} {v}" for k, v in report.steps_per_s.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
