"""What tracing and structured logging add to an ``llm_call``, side by side, in one run
(OBS-8030).

Run as ``python -m tools.bench.observability [--rounds R] [--per-round K] [--json]``. It
starts three ``orchestratord serve --mock`` processes that differ only in observability:

* ``off``: no ``OTEL_*`` variable (no SDK, OBS-8001) and ``--log-level warning`` (no
  access or transition lines);
* ``logs``: ``--log-format json`` at ``info``: an access line per request and the
  Step's terminal line (its ``admitted`` and ``running`` lines are ``debug``, OBS-8023),
  tracing off;
* ``logs+traces``: the same, and ``OTEL_TRACES_EXPORTER=console`` (the SDK, its batch
  span processor, every span serialised as JSON into the server's log file).

With ``--base REV``, a fourth server runs the tree of that git revision (``git archive``
into a temporary directory, started from there): the code before the instrumentation,
so ``off`` against it is the cost of the disabled path (OBS-8001).

Each sample is one ``POST /v1/runs/{id}/steps`` with ``Accept: text/event-stream`` (the
submit and the Step's stream in one round trip, STREAM-2010), timed from just before
the request to the receipt of the ``end`` frame, over a minimal keep-alive client
(:mod:`tools.bench.rawhttp`). The servers are alternated request by request, so drift
on a shared machine hits all alike. The added latency is each variant's p50 (the
median of per-round medians) and p99 minus ``off``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import msgspec

from tools.servers import start_server, stop_server

from .rawhttp import RawHttp
from .stats import PathStats, summarise

__all__ = ["VARIANTS", "ObservabilityReport", "Variant", "main", "measure", "render_text"]

PROMPT = "The three primary colours are"
MODEL = "mock:echo-1"


class Variant(msgspec.Struct, frozen=True):
    """One server configuration: its ``serve`` flags and environment, and the source tree
    it runs from (None: this one)."""

    name: str
    flags: tuple[str, ...]
    env: dict[str, str]
    tree: str | None = None


VARIANTS = (
    Variant("off", ("--log-level", "warning"), {}),
    Variant("logs", ("--log-format", "json"), {}),
    Variant("logs+traces", ("--log-format", "json"),
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "bench"}),
)
"""The servers measured; the first is the baseline."""

_OTEL = ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME",
         "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


class VariantResult(msgspec.Struct, frozen=True):
    """One variant's latency and what it adds over ``off`` (ms)."""

    name: str
    stats: PathStats
    added_p50_ms: float
    added_p99_ms: float


class ObservabilityReport(msgspec.Struct, frozen=True):
    """The run: its shape and each variant's figures."""

    rounds: int
    per_round: int
    max_tokens: int
    variants: list[VariantResult]


@contextmanager
def _server(variant: Variant, root: pathlib.Path) -> Iterator[tuple[str, pathlib.Path]]:
    """One ``serve --mock`` process with the variant's flags and environment only (and,
    for another tree, started from that tree with it first on ``PYTHONPATH``)."""
    data = root / ("data-" + variant.name.replace("+", "-").replace(" ", "-"))
    data.mkdir()
    saved = {k: os.environ.pop(k) for k in (*_OTEL, "PYTHONPATH") if k in os.environ}
    os.environ.update(variant.env)
    cwd = os.getcwd()
    if variant.tree is not None:
        os.environ["PYTHONPATH"] = variant.tree
        os.chdir(variant.tree)  # ``python -m`` puts the working directory first
    try:
        proc, url = start_server(mock=True, data_dir=str(data), extra=list(variant.flags))
    finally:
        os.chdir(cwd)
        for key in (*variant.env, "PYTHONPATH"):
            os.environ.pop(key, None)
        os.environ.update(saved)
    try:
        yield url, data / "server.log"
    finally:
        stop_server(proc)


def _checkout(rev: str, into: pathlib.Path) -> str:
    """The tree of ``rev`` (``git archive``) in ``into``; its path."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return str(into)


class _Client:
    """A keep-alive connection and a record Run on one server."""

    def __init__(self, url: str, max_tokens: int) -> None:
        self.conn = RawHttp(url)
        self.max_tokens = max_tokens
        self.run_id = ""

    async def setup(self) -> None:
        flow = await self.conn.request("POST", "/v1/flows", b'{"ast_ir": {"bench": 1}}')
        flow_id = msgspec.json.decode(flow.body)["flow_id"]
        run = await self.conn.request("POST", f"/v1/flows/{flow_id}/runs", b'{"seed": 1}')
        self.run_id = msgspec.json.decode(run.body)["run_id"]

    async def one_trip(self) -> float:
        """One ``llm_call`` submitted and streamed to its ``end`` frame (ms)."""
        body = msgspec.json.encode({
            "type": "llm_call", "client_token": str(uuid.uuid4()),
            "input": {"model": MODEL, "prompt": PROMPT,
                      "params": {"temperature": 0.0, "max_tokens": self.max_tokens,
                                 "seed": 1234}}})
        t0 = time.perf_counter_ns()
        resp = await self.conn.request("POST", f"/v1/runs/{self.run_id}/steps", body,
                                       {"Accept": "text/event-stream"})
        ms = (time.perf_counter_ns() - t0) / 1e6
        if resp.status != 201 or b"event: end\n" not in resp.body:
            raise RuntimeError(f"submit answered {resp.status}: {resp.body[-200:]!r}")
        return ms


async def _measure(urls: list[str], rounds: int, per_round: int, warmup: int,
                   max_tokens: int) -> list[list[list[float]]]:
    clients = [_Client(u, max_tokens) for u in urls]
    for c in clients:
        await c.setup()
        for _ in range(warmup):
            await c.one_trip()
    samples: list[list[list[float]]] = [[] for _ in clients]
    for _ in range(rounds):
        per: list[list[float]] = [[] for _ in clients]
        for _ in range(per_round):
            for i, c in enumerate(clients):
                per[i].append(await c.one_trip())
        for i in range(len(clients)):
            samples[i].append(per[i])
    for c in clients:
        await c.conn.aclose()
    return samples


def measure(rounds: int = 5, per_round: int = 40, warmup: int = 20,
            max_tokens: int = 16, base: str | None = None) -> ObservabilityReport:
    """Start the servers, alternate requests between them, summarise.

    Args:
        rounds: rounds of ``per_round`` requests per server.
        per_round: requests per server per round.
        warmup: unmeasured requests per server first.
        max_tokens: tokens per Step (the mock engine streams exactly that many).
        base: a git revision whose tree is measured too, with its default flags.

    Returns:
        Each variant's latency (ms) and its difference from ``off``.

    Raises:
        RuntimeError: a server did not start, or a Step did not end with ``end``.
        subprocess.CalledProcessError: ``base`` is not a revision of this repository.
    """
    with tempfile.TemporaryDirectory(prefix="bench-obs-") as tmp, ExitStack() as stack:
        root = pathlib.Path(tmp)
        variants = list(VARIANTS)
        if base is not None:
            variants.append(Variant(f"before ({base[:12]})", (), {},
                                    _checkout(base, root / "base")))
        servers = [stack.enter_context(_server(v, root)) for v in variants]
        samples = asyncio.run(_measure([u for u, _ in servers], rounds, per_round, warmup,
                                       max_tokens))
        stack.close()  # stopped: the batch is flushed at shutdown
        if '"name": "step llm_call"' not in servers[2][1].read_text(errors="replace"):
            raise RuntimeError("the traced server printed no Step span")
    stats = [summarise(s) for s in samples]
    off = stats[0]
    return ObservabilityReport(rounds=rounds, per_round=per_round, max_tokens=max_tokens,
                               variants=[VariantResult(
                                   name=v.name, stats=st,
                                   added_p50_ms=round(st.p50_ms - off.p50_ms, 3),
                                   added_p99_ms=round(st.p99_ms - off.p99_ms, 3))
                                   for v, st in zip(variants, stats, strict=True)])


def render_text(report: ObservabilityReport) -> str:
    """The variants as a table (ms), the added latency beside each."""
    lines = [f"latency per llm_call (submit to end frame, one round trip, mock engine, "
             f"{report.max_tokens} tokens): {report.rounds} rounds x {report.per_round} "
             f"requests per server, alternating", "",
             f"   {'server':<24}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>10}{'+p99 ms':>10}"]
    for v in report.variants:
        lines.append(f"   {v.name:<24}{v.stats.p50_ms:>9.3f}{v.stats.p99_ms:>9.3f}"
                     f"{v.added_p50_ms:>10.3f}{v.added_p99_ms:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tools.bench.observability``."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.observability",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--base", help="also measure this git revision's tree (e.g. the "
                        "commit before the instrumentation)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = measure(args.rounds, args.per_round, args.warmup, args.max_tokens, args.base)
    out: Any = msgspec.json.encode(report).decode() if args.json else render_text(report)
    sys.stdout.write(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
