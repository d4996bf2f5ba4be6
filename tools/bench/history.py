"""``python -m tools.bench.history``: does a Step, or reading a Run, cost more as the Run
or the store grows? (NERVE-4042)

Two ``orchestratord serve --mock`` processes run side by side (:mod:`tools.servers`):

* the **big store**: one template Run and Step recorded over HTTP, then, with the server
  stopped, filled through the store's own API (:mod:`tools.bench.history_fill`: synthetic
  but valid copies of that Step, every frame included) with long Runs of 1,000 and
  10,000 Steps and filler Runs up to 20,000 Runs and 1,000,000 events; restarted, it
  serves them normally. Long Runs of at most ``--http-fill-max`` Steps (the Run of 10)
  are filled over HTTP after the restart, which is cheap;
* the **empty store**: a new data directory. It serves as many requests as the big one
  (as many fresh Runs as the big store has paths, taken in turn), so that both servers
  carry the same load and a periodic cost (a WAL checkpoint, a garbage collection) falls
  on each as often.

Each round makes a fresh Run in each store. Then, request by request, with the order of
the paths rotated every time so that drift hits each alike, it times (a) an ``llm_call``
Step from just before ``POST /v1/runs/{id}/steps`` to the receipt of its ``end`` frame
on ``GET /v1/steps/{id}/stream`` and (b) ``GET /v1/runs/{id}``, for: the fresh Run of the
empty store, the fresh Run of the big store, and each long Run of the big store. It
prints p50 (median of the per-round medians) and p99 (nearest rank over every sample) of
each, and the ratios: each long Run over the fresh Run of the big store, and the fresh
Run of the big store over that of the empty one (target: every ratio <= 1.2). The 2
cores are shared with the client and both servers: the p99 ratios are the noisy ones.

``--quick`` is a smoke run (Runs of 10, 100 and 1,000 Steps; 2,000 Runs and 50,000
events; 2 rounds of 5). ``--json`` prints the report, with its ``figures`` (name, unit,
direction, value) as :mod:`tools.bench.compare` reads them. The exit status is 0 when the
measurement completed and every long Run read back with the usage it was given.
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from subprocess import Popen

import anyio
import httpx
import msgspec

from orchestratord.client import OrchestratorClient
from tools.servers import start_server, stop_server

from .history_fill import FillPlan, FillReport, fill_store
from .stats import PathStats, summarise

__all__ = ["HistoryReport", "Ratio", "main", "parse_args", "render_text"]

_FLOW = {"version": 1, "name": "bench-history",
         "steps": [{"id": "probe", "op": "llm_call", "inputs": []}]}
_FRESH_EMPTY, _FRESH_BIG = "fresh run, empty store", "fresh run, big store"


class PathReport(msgspec.Struct, frozen=True):
    """One path: where it sends its requests and how long they took (ms).

    Attributes:
        name: e.g. ``run of 10,000 steps``.
        steps_before: Steps its Run held when the measurement started.
        step: POST of a Step to its ``end`` frame.
        get_run: ``GET /v1/runs/{id}``.
    """

    name: str
    steps_before: int
    step: PathStats
    get_run: PathStats


class Ratio(msgspec.Struct, frozen=True):
    """One row of the ratio table.

    Attributes:
        name: ``<path> / <baseline path>``.
        step_p50: ratio of the Step p50s; likewise the others.
        step_p99: ratio of the Step p99s.
        get_p50: ratio of the ``GET /v1/runs/{id}`` p50s.
        get_p99: ratio of the ``GET /v1/runs/{id}`` p99s.
    """

    name: str
    step_p50: float
    step_p99: float
    get_p50: float
    get_p99: float


class HistoryReport(msgspec.Struct, frozen=True):
    """Everything one run measured.

    Attributes:
        quick: a ``--quick`` smoke run.
        rounds: R, rounds (a fresh Run per store each).
        per_round: K, requests per path per round.
        max_tokens: tokens per Step.
        fill: what the offline fill wrote to the big store.
        http_filled: long Runs filled over HTTP, by Step count, and the seconds it took.
        paths: per path statistics, empty store first.
        ratios: the ratio table.
        target: the ratio every row should stay at or below.
        usage_checked: every long Run read back with the Step count it was given.
        figures: each figure as ``{name, unit, direction, value}``.
    """

    quick: bool
    rounds: int
    per_round: int
    max_tokens: int
    fill: FillReport
    http_filled: dict[str, float]
    paths: list[PathReport]
    ratios: list[Ratio]
    target: float
    usage_checked: bool
    figures: list[dict[str, str | float]]


class _Target(msgspec.Struct):
    name: str
    client: OrchestratorClient
    run_id: str
    steps_before: int
    step_ms: list[list[float]] = msgspec.field(default_factory=list)
    get_ms: list[list[float]] = msgspec.field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m tools.bench.history",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: runs of 10, 100, 1000 steps; 2,000 runs, 50,000 events; "
                        "2 rounds of 5")
    p.add_argument("--sizes", default=None,
                   help="steps of each long run, comma separated (default 10,1000,10000)")
    p.add_argument("--runs", type=int, default=None, help="runs in the big store (20000)")
    p.add_argument("--events", type=int, default=None,
                   help="events in the big store (1000000)")
    p.add_argument("--rounds", type=int, default=None, help="rounds R (default 8)")
    p.add_argument("--per-round", type=int, default=None,
                   help="requests per path per round K (default 60)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens per step (default 8)")
    p.add_argument("--http-fill-max", type=int, default=100,
                   help="long runs of at most this many steps are filled over HTTP (100)")
    p.add_argument("--target", type=float, default=1.2, help="ratio target (1.2)")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.parse_args(argv)
    quick = a.quick
    a.sizes = [int(x) for x in (a.sizes or ("10,100,1000" if quick else "10,1000,10000")
                                ).split(",")]
    a.runs = a.runs if a.runs is not None else (2_000 if quick else 20_000)
    a.events = a.events if a.events is not None else (50_000 if quick else 1_000_000)
    a.rounds = a.rounds if a.rounds is not None else (2 if quick else 8)
    a.per_round = a.per_round if a.per_round is not None else (5 if quick else 60)
    if a.rounds < 1 or a.per_round < 1 or a.max_tokens < 1 or min(a.sizes) < 1:
        p.error("--rounds, --per-round, --max-tokens and --sizes must be at least 1")
    return a


def _step_body(token: str, max_tokens: int) -> dict[str, object]:
    return {"type": "llm_call", "client_token": token,
            "input": {"model": "mock:echo-1", "prompt": "The three primary colours are",
                      "params": {"temperature": 0.0, "max_tokens": max_tokens}}}


async def _one_step(client: OrchestratorClient, run_id: str, token: str,
                    max_tokens: int) -> float:
    """One Step, POST to ``end`` (ms)."""
    t0 = time.perf_counter_ns()
    step = await client.submit_step(run_id, _step_body(token, max_tokens))
    async for frame in client.stream(step.step_id):
        if frame.event == "end":
            return (time.perf_counter_ns() - t0) / 1e6
        if frame.event == "error":
            raise RuntimeError(f"step {step.step_id} failed: {frame.raw}")
    raise RuntimeError(f"step {step.step_id}: stream ended without a terminal frame")


async def _one_get(http: httpx.AsyncClient, run_id: str) -> float:
    """One ``GET /v1/runs/{id}`` (ms)."""
    t0 = time.perf_counter_ns()
    resp = await http.get(f"/v1/runs/{run_id}")
    ms = (time.perf_counter_ns() - t0) / 1e6
    if resp.status_code != 200:
        raise RuntimeError(f"GET /v1/runs/{run_id}: HTTP {resp.status_code}")
    return ms


async def _record_template(url: str, max_tokens: int) -> tuple[str, str]:
    """A flow, a run and one finished Step, over HTTP: the template of the fill."""
    async with OrchestratorClient(url, timeout_s=60.0) as client:
        flow = await client.create_flow(_FLOW)
        run = await client.create_run(flow.flow_id, mode="record", seed=1)
        step = await client.submit_step(run.run_id, _step_body("template", max_tokens))
        async for frame in client.stream(step.step_id):
            if frame.event in ("end", "error"):
                break
        return run.run_id, step.step_id


@contextlib.contextmanager
def _servers(*data_dirs: str) -> Iterator[list[str]]:
    """``orchestratord serve --mock`` on each data directory; their base URLs."""
    procs: list[Popen[bytes]] = []
    urls: list[str] = []
    try:
        for d in data_dirs:
            proc, url = start_server(mock=True, data_dir=d)
            procs.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in procs:
            stop_server(proc)


async def _measure(args: argparse.Namespace, big_url: str, empty_url: str,
                   long_ids: dict[int, str]) -> tuple[list[_Target], dict[str, float], bool]:
    """Fill the short Runs over HTTP, then measure every path, interleaved."""
    async with contextlib.AsyncExitStack() as stack:
        big = await stack.enter_async_context(OrchestratorClient(big_url, timeout_s=60.0))
        empty = await stack.enter_async_context(OrchestratorClient(empty_url, timeout_s=60.0))
        gets = {c: await stack.enter_async_context(httpx.AsyncClient(base_url=u, timeout=60))
                for c, u in ((big, big_url), (empty, empty_url))}
        flows = {c: (await c.create_flow(_FLOW)).flow_id for c in (big, empty)}
        http_filled: dict[str, float] = {}
        for n in args.sizes:
            if n in long_ids:
                continue
            t0 = time.perf_counter()
            long_ids[n] = (await big.create_run(flows[big], mode="record", seed=1)).run_id
            for i in range(n):
                await _one_step(big, long_ids[n], f"fill-{i}", args.max_tokens)
            http_filled[f"{n:,}"] = round(time.perf_counter() - t0, 2)
        on_big = [_Target(_FRESH_BIG, big, "", 0)] + [
            _Target(f"run of {n:,} steps", big, long_ids[n], n) for n in args.sizes]
        # as many fresh Runs in the empty store, taken in turn: the same load on each server
        targets = [t for b in on_big for t in (b, _Target(_FRESH_EMPTY, empty, "", 0))]
        for t in targets:  # warm-up, not counted (a fresh Run's in a throwaway Run)
            run_id = t.run_id or (await t.client.create_run(flows[t.client], mode="record",
                                                            seed=1)).run_id
            await _one_step(t.client, run_id, "warm-up", args.max_tokens)
            await _one_get(gets[t.client], run_id)
        k = 0
        for r in range(args.rounds):
            for t in targets:
                if not t.steps_before:
                    t.run_id = (await t.client.create_run(flows[t.client], mode="record",
                                                          seed=1)).run_id
                t.step_ms.append([])
                t.get_ms.append([])
            for i in range(args.per_round):
                for j in range(len(targets)):
                    t = targets[(j + k) % len(targets)]
                    t.step_ms[-1].append(await _one_step(t.client, t.run_id, f"r{r}-{i}",
                                                         args.max_tokens))
                    t.get_ms[-1].append(await _one_get(gets[t.client], t.run_id))
                k += 1
        checked = True
        for t in on_big[1:]:
            run = await t.client.get_run(t.run_id)
            want = t.steps_before + 1 + args.rounds * args.per_round
            checked = checked and run.steps == {"succeeded": want}
    return targets, http_filled, checked


def _paths(targets: list[_Target]) -> list[PathReport]:
    """One report per path name, empty store first; the samples of the empty store's
    fresh Runs pooled round by round."""
    names = [_FRESH_EMPTY] + [t.name for t in targets if t.name != _FRESH_EMPTY]
    out = []
    for name in names:
        group = [t for t in targets if t.name == name]
        rounds = range(len(group[0].step_ms))
        out.append(PathReport(
            name=name, steps_before=group[0].steps_before,
            step=summarise([[x for t in group for x in t.step_ms[r]] for r in rounds]),
            get_run=summarise([[x for t in group for x in t.get_ms[r]] for r in rounds])))
    return out


def _ratio(name: str, top: PathReport, base: PathReport) -> Ratio:
    def r(a: float, b: float) -> float:
        return round(a / b, 3) if b > 0 else float("inf")

    return Ratio(name=name, step_p50=r(top.step.p50_ms, base.step.p50_ms),
                 step_p99=r(top.step.p99_ms, base.step.p99_ms),
                 get_p50=r(top.get_run.p50_ms, base.get_run.p50_ms),
                 get_p99=r(top.get_run.p99_ms, base.get_run.p99_ms))


def _figures(paths: list[PathReport], ratios: list[Ratio], target: float,
             checked: bool) -> list[dict[str, str | float]]:
    out: list[dict[str, str | float]] = []

    def add(name: str, unit: str, value: float, direction: str = "lower-is-better") -> None:
        out.append({"name": name, "unit": unit, "direction": direction, "value": value})

    for p in paths:
        for what, s in (("step", p.step), ("GET run", p.get_run)):
            add(f"history: {p.name}, {what} p50", "ms", s.p50_ms)
            add(f"history: {p.name}, {what} p99", "ms", s.p99_ms)
    for r in ratios:
        for field in ("step_p50", "step_p99", "get_p50", "get_p99"):
            add(f"history: {r.name}, {field.replace('_', ' ')}", "x", getattr(r, field))
    worst = max((max(r.step_p50, r.step_p99, r.get_p50, r.get_p99) for r in ratios),
                default=0.0)
    add("history: every ratio within the target", "check", float(worst <= target),
        "higher-is-better")
    add("history: long runs read back their steps", "check", float(checked),
        "higher-is-better")
    return out


def render_text(rep: HistoryReport) -> str:
    """The human-readable report: per-path figures, then the ratio table."""
    f = rep.fill
    lines = [
        f"history bench{' (--quick)' if rep.quick else ''}: mock engine, {rep.max_tokens} "
        f"tokens per step, {rep.rounds} rounds x {rep.per_round} requests per path, "
        "paths interleaved",
        f"big store: {f.runs:,} runs, {f.steps:,} steps, {f.events:,} events (offline "
        f"fill {f.seconds} s, {f.frames_per_step} frames per step; over HTTP: "
        + (", ".join(f"run of {k} in {v} s" for k, v in rep.http_filled.items()) or "none")
        + ")",
        "",
        f"   {'path (ms)':<34}{'step p50':>10}{'step p99':>10}{'GET p50':>10}{'GET p99':>10}",
    ]
    for p in rep.paths:
        lines.append(f"   {p.name:<34}{p.step.p50_ms:>10.2f}{p.step.p99_ms:>10.2f}"
                     f"{p.get_run.p50_ms:>10.2f}{p.get_run.p99_ms:>10.2f}")
    lines += ["", f"   {'ratio (target <= ' + format(rep.target, '.2f') + ')':<34}"
                  f"{'step p50':>10}{'step p99':>10}{'GET p50':>10}{'GET p99':>10}"]
    for r in rep.ratios:
        cells = "".join(f"{v:>9.3f}{'*' if v > rep.target else ' '}"
                        for v in (r.step_p50, r.step_p99, r.get_p50, r.get_p99))
        lines.append(f"   {r.name:<34}{cells}")
    lines += ["", "   * over the target; p50 = median of the per-round medians, p99 = "
                  "nearest rank over all samples",
              f"   long runs read back with the steps they were given: "
              f"{'yes' if rep.usage_checked else 'NO'}"]
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    """Fill, measure and print.

    Returns:
        0 when the measurement completed and every long Run read back its Step count.
    """
    args = parse_args(argv)
    root = pathlib.Path(tempfile.mkdtemp(prefix="orchestratord-history-"))
    big_dir, empty_dir = str(root / "big"), str(root / "empty")
    for d in (big_dir, empty_dir):
        pathlib.Path(d).mkdir()
    ok = False

    def say(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    try:
        proc, url = start_server(mock=True, data_dir=big_dir)
        try:
            template = anyio.run(_record_template, url, args.max_tokens)
        finally:
            stop_server(proc)
        offline = [n for n in args.sizes if n > args.http_fill_max]
        say(f"filling the big store offline: runs of {offline} steps, {args.runs:,} runs, "
            f"{args.events:,} events...")
        fill = fill_store(pathlib.Path(big_dir) / "orchestrator.db", *template,
                          FillPlan(long_runs=offline, runs_total=args.runs,
                                   events_total=args.events))
        say(f"filled in {fill.seconds} s; measuring...")
        with _servers(big_dir, empty_dir) as (big_url, empty_url):
            targets, http_filled, checked = anyio.run(
                _measure, args, big_url, empty_url, dict(zip(offline, fill.long_run_ids,
                                                             strict=True)))
        paths = _paths(targets)
        base = paths[1]
        ratios = [_ratio(f"{p.name} / fresh run", p, base) for p in paths[2:]]
        ratios.append(_ratio("big store / empty store", base, paths[0]))
        report = HistoryReport(
            quick=args.quick, rounds=args.rounds, per_round=args.per_round,
            max_tokens=args.max_tokens, fill=fill, http_filled=http_filled, paths=paths,
            ratios=ratios, target=args.target, usage_checked=checked,
            figures=_figures(paths, ratios, args.target, checked))
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"server data and logs kept in {root}", file=sys.stderr)
    print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode() if args.json
          else render_text(report))
    return 0 if checked else 1


if __name__ == "__main__":
    raise SystemExit(main())
