"""``python -m tools.bench.multi``: several orchestratord processes over one PostgreSQL
(issue 16; PG-9103, PG-9121).

Three measurements, on a throwaway cluster (:mod:`tools.pg_cluster`) and the mock engine,
in one run:

1. **cross-process delivery latency**: a Step runs on process A (the mock at 50 tokens/s,
   40 tokens); one reader on A and one on B stream it at once; for every token frame the
   added latency is the time it reached B's reader minus the time it reached A's (ms, p50
   and p99 over every token of ``--steps`` Steps). B's reader is woken by A's commit
   through ``LISTEN/NOTIFY`` and reads the frames from the database.
2. **added latency per ``llm_call``** on each backend, one process each (SQLite, then
   PostgreSQL): ``POST /v1/runs/{id}/steps`` with ``Accept: text/event-stream`` to the
   ``end`` frame, minus the mock engine called in-process, p50 and p99, exactly as
   :func:`tools.bench.overhead.llm_call_added` times it (``--rounds`` x ``--per-round``
   requests per path, 8 tokens).
3. **durable steps per second**: 32 clients, each submitting 4-token ``llm_call`` Steps and
   reading each stream to its terminal frame, spread round-robin over 1, 2 and 3 processes
   on PostgreSQL, and over 1 process on SQLite, for ``--seconds`` each.

The figures are printed side by side (``--json``: as JSON) with the targets of PG-9121;
the exit code is 0 when every figure meets its target, else 1. Numbers on a shared 2-core
machine are noisy: compare them within one run.
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

from .overhead import llm_call_added
from .stats import percentile

__all__ = ["Added", "MultiReport", "Targets", "main", "measure", "misses", "render"]


class Added(msgspec.Struct, frozen=True):
    """Added latency per ``llm_call`` on one backend (ms): p50 and p99 of the one-round-
    trip path minus those of the mock engine called in-process."""

    p50_ms: float
    p99_ms: float


class Targets(msgspec.Struct, frozen=True):
    """What :func:`misses` holds the figures to (PG-9121).

    Attributes:
        llm_call_p50_ms / llm_call_p99_ms: the added latency per ``llm_call``, each backend
            (ms; SQLite's is the target of ``tools.bench.overhead``, 1.5 / 5.0).
        pg_llm_call_p50_ms / pg_llm_call_p99_ms: the same on PostgreSQL (ms).
        delivery_p50_ms / delivery_p99_ms: a token on B after A (ms).
        min_pg_ratio: durable Steps/s of each ``pg-N`` at least this share of
            ``sqlite-1``'s.
    """

    llm_call_p50_ms: float = 1.5
    llm_call_p99_ms: float = 5.0
    pg_llm_call_p50_ms: float = 5.0
    pg_llm_call_p99_ms: float = 15.0
    delivery_p50_ms: float = 10.0
    delivery_p99_ms: float = 50.0
    min_pg_ratio: float = 0.25


class MultiReport(msgspec.Struct, frozen=True):
    """What :func:`measure` found.

    Attributes:
        delivery_p50_ms / delivery_p99_ms: added latency of a token read on B over the
            same token read on A, the process running the Step (ms).
        tokens_measured: token frames behind those percentiles.
        steps_per_s: ``"pg-1"``, ``"pg-2"``, ``"pg-3"``, ``"sqlite-1"`` -> durable Steps
            completed per second (32 clients, 4-token Steps).
        llm_call_added: ``"sqlite-1"``, ``"pg-1"`` -> added latency per ``llm_call``.
        llm_call_requests: requests per path behind each of those (rounds x per round).
        targets: what the figures are held to.
    """

    delivery_p50_ms: float
    delivery_p99_ms: float
    tokens_measured: int
    steps_per_s: dict[str, float]
    llm_call_added: dict[str, Added] = {}
    llm_call_requests: int = 0
    targets: Targets = Targets()


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


def _added(url: str, rounds: int, per_round: int) -> Added:
    path = llm_call_added(url, rounds=rounds, per_round=per_round)
    return Added(p50_ms=path.added_p50_ms or 0.0, p99_ms=path.added_p99_ms or 0.0)


def measure(work: pathlib.Path, *, steps: int = 10, seconds: float = 5.0, rounds: int = 5,
            per_round: int = 20) -> MultiReport:
    """Start a cluster and the servers; measure (see the module docstring).

    Args:
        work: an empty directory for data dirs and configs.
        steps: Steps of the delivery latency measurement.
        seconds: length of each throughput measurement (s).
        rounds / per_round: R rounds of K requests per path of the added latency per
            ``llm_call``.

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
        per_call: dict[str, Added] = {}
        for name, where in (("sqlite-1", None), ("pg-1", dsn)):
            with _servers(1, dsn=where, schema=f"call{name[0]}", work=work,
                          options={}) as (url,):
                per_call[name] = _added(url, rounds, per_round)
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
                       steps_per_s={k: round(v, 1) for k, v in rates.items()},
                       llm_call_added=per_call, llm_call_requests=rounds * per_round)


def misses(report: MultiReport) -> list[str]:
    """The figures of ``report`` that miss their targets (PG-9121).

    Args:
        report: what :func:`measure` found, with its :class:`Targets`.

    Returns:
        One line per missed target (empty: every figure meets its target).
    """
    t = report.targets
    out = []
    if report.delivery_p50_ms > t.delivery_p50_ms or report.delivery_p99_ms > t.delivery_p99_ms:
        out.append(f"cross-process delivery p50 {report.delivery_p50_ms} / p99 "
                   f"{report.delivery_p99_ms} ms > {t.delivery_p50_ms} / {t.delivery_p99_ms}")
    for name, got in sorted(report.llm_call_added.items()):
        p50, p99 = ((t.pg_llm_call_p50_ms, t.pg_llm_call_p99_ms) if name.startswith("pg")
                    else (t.llm_call_p50_ms, t.llm_call_p99_ms))
        if got.p50_ms > p50 or got.p99_ms > p99:
            out.append(f"added per llm_call on {name}: +{got.p50_ms} / +{got.p99_ms} ms > "
                       f"{p50} / {p99}")
    if len(report.llm_call_added) != 2:
        out.append(f"added per llm_call measured on {sorted(report.llm_call_added)}, "
                   "not on sqlite-1 and pg-1")
    base = report.steps_per_s.get("sqlite-1", 0.0)
    for name, rate in sorted(report.steps_per_s.items()):
        if name.startswith("pg") and rate < t.min_pg_ratio * base:
            out.append(f"{name} {rate} steps/s < {t.min_pg_ratio} x sqlite-1 ({base})")
    return out


def render(report: MultiReport) -> str:
    """The figures side by side, with their targets and what misses them."""
    t = report.targets
    names = ["sqlite-1", "pg-1", "pg-2", "pg-3"]
    rows = [f"   {'':<44}" + "".join(f"{n:>10}" for n in names)]
    rows.append(f"   {'durable steps/s (32 clients, 4-token steps)':<44}" + "".join(
        f"{report.steps_per_s[n]:>10}" if n in report.steps_per_s else f"{'':>10}"
        for n in names))
    for label, attr in (("+p50 ms per llm_call (POST -> end)", "p50_ms"),
                        ("+p99 ms per llm_call (POST -> end)", "p99_ms")):
        rows.append(f"   {label:<44}" + "".join(
            f"{getattr(report.llm_call_added[n], attr):>10.3f}" if n in report.llm_call_added
            else f"{'-':>10}" for n in names))
    missed = misses(report)
    return "\n".join([
        "orchestratord over PostgreSQL, several processes (mock engine), one run:",
        *rows,
        f"   cross-process delivery (token on B after A): p50 {report.delivery_p50_ms} ms, "
        f"p99 {report.delivery_p99_ms} ms over {report.tokens_measured} tokens",
        "",
        f"   +p50/+p99: minus the mock engine called in-process; {report.llm_call_requests} "
        "requests per path,",
        "   alternated, 8 tokens (tools.bench.overhead's one round trip)",
        f"   targets (PG-9121): +{t.llm_call_p50_ms} / +{t.llm_call_p99_ms} ms on sqlite-1, "
        f"+{t.pg_llm_call_p50_ms} / +{t.pg_llm_call_p99_ms} ms on pg-1;",
        f"   delivery {t.delivery_p50_ms} / {t.delivery_p99_ms} ms; each pg-N at least "
        f"{t.min_pg_ratio} x sqlite-1's steps/s: " + ("met" if not missed else "NOT met"),
        *(f"   missed: {m}" for m in missed),
    ])


def main(argv: list[str] | None = None) -> int:
    """Run :func:`measure` and print the report.

    Args:
        argv: ``[--steps N] [--seconds S] [--rounds R] [--per-round K] [--json]``.

    Returns:
        0 when every figure meets its target (:func:`misses`), else 1.
    """
    p = argparse.ArgumentParser(prog="python -m tools.bench.multi", description=__doc__)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orch-bench-multi-") as work:
        report = measure(pathlib.Path(work), steps=args.steps, seconds=args.seconds,
                         rounds=args.rounds, per_round=args.per_round)
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        print(render(report))
    return 1 if misses(report) else 0


if __name__ == "__main__":
    raise SystemExit(main())
