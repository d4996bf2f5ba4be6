"""Crash loop: kill -9 the server at random moments while steps stream, restart, verify.

Every cycle starts ``orchestratord serve`` on ONE data directory shared by all cycles,
submits ``--streams`` concurrent ``llm_call`` steps, reads their SSE streams in threads
(every other one through the stream answer of re-POSTing its body, STREAM-2010),
sends SIGKILL to the server at a random moment and then checks, after the next start,
that the crash cost nothing. The report gives five figures that must all be 0:

* **lost events**: a durable frame a reader received is missing from (or differs in)
  the step's log after restart; a terminal step without a terminal frame; non-zero
  ``seq_gaps``/``stale_last_seq`` from :meth:`SqliteStore.integrity`;
* **duplicated tokens**: a step log whose ``id`` values are not exactly ``0..m`` or whose
  token indices ``i`` are not exactly ``0..n-1``, more than one terminal frame, or a
  ``tokens_out`` that disagrees with the token frames;
* **orphan engine processes**: a replica (or any other child of the server) still alive
  5 s after the server was killed, or after the final clean stop;
* **broken idempotency**: a re-POST of a step's original body with its ``client_token``
  that does not return 200 with the token's latest attempt, or, when a crash left that
  attempt ``interrupted``, does not make exactly one next attempt (201, ``retry_of`` the
  first, and 200 with the same Step when sent again, NERVE-4105); a ``(run_id,
  client_token, attempt)`` that maps to more than one step row, or a token whose rows are
  not exactly its attempts; or a step that is not terminal after restart recovery;
* **counter mismatches**: Runs whose usage counters (tokens, cost, wall time, Steps by
  status, kept by the store in the transaction of each Step write, NERVE-4042) differ
  from a recount over their Steps, ``usage_mismatch`` of :meth:`SqliteStore.integrity`.

Each cycle also replays the previous cycle's record Runs (their Steps served by reference
to the recording, NERVE-4025), one Step every 50 ms while the kill may land; each Step
answered is verified like the others, and a broken reference counts as a lost event.

Each cycle also runs ``--fs-appends`` concurrent ``fs_op`` appends per Run from a Run and
its fork (from a checkpoint) on one shared sandbox root (:mod:`tools.crash_fs`), which
adds two more figures that must be 0: **lost acknowledged appends** (an append whose
``end`` frame a client received but whose line is not in the file exactly once) and
**leftover temp files** (``.fsbroker-*.tmp`` files after a restart or the final stop).

Run ``python -m tools.crash_loop`` (real llama.cpp engine) or ``--mock``; ``--json``
prints the report as JSON. The exit code is 1 when any figure is non-zero or the loop
could not complete.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import Any

# Running as ``python tools/crash_loop.py`` puts tools/ first on sys.path; the repository
# root is needed for ``test_harness`` (the installed packages resolve either way).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import httpx
import msgspec

from orchestrator_core.config import ServerConfig, default_config, mock_config
from test_harness.support import pid_alive
from tools import crash_fs
from tools.servers import start_server, stop_server

__all__ = ["Options", "Tally", "main", "parse_args", "run_crash_loop"]
# The data and constants are in tools/crash_model.py, the checks in tools/crash_checks.py.

from tools.crash_checks import (
    check_integrity,
    check_temp_files,
    read_frames,
    reader,
    verify_all,
)
from tools.crash_model import (
    HTTP_TIMEOUT,
    LOOP_ERRORS,
    MOCK_TOKENS_PER_S,
    ORPHAN_GRACE_S,
    PROMPTS,
    READER_JOIN_S,
    START_ATTEMPTS,
    Loop,
    Options,
    Server,
    StepRecord,
    Tally,
)

# -- server lifecycle ------------------------------------------------------------------


def build_config(mock: bool, data_dir: pathlib.Path) -> ServerConfig:
    """The server config: llama.cpp default pool, or the mock at 300 tokens/s.

    The mock's ``length`` is set high so that ``max_tokens`` bounds every answer.
    """
    if mock:
        return mock_config(data_dir=str(data_dir),
                           mock_options={"tokens_per_s": MOCK_TOKENS_PER_S, "length": 100_000})
    return default_config(data_dir=str(data_dir))


def write_config(config: ServerConfig, data_dir: pathlib.Path) -> pathlib.Path:
    """Write ``config`` as ``crash_loop_config.json`` in ``data_dir``; return its path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "crash_loop_config.json"
    path.write_bytes(msgspec.json.encode(config))
    return path


def start(loop: Loop) -> Server:
    """Start the server on the shared data directory (up to :data:`START_ATTEMPTS` tries).

    Raises:
        RuntimeError: it never became ready (``start_server`` waits at most 180 s a try).
    """
    error: Exception | None = None
    for _ in range(START_ATTEMPTS):
        try:
            proc, url = start_server(data_dir=str(loop.data_dir),
                                     extra=["--config", str(loop.config_path)])
            return Server(proc, url)
        except RuntimeError as exc:  # e.g. a port taken between probe and bind
            error = exc
            time.sleep(1.0)
    raise RuntimeError(f"server did not start: {error}")


def descendants(root: int) -> set[int]:
    """Pids of every live descendant of ``root``, from ``/proc/*/stat``."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def replica_pids(http: httpx.Client) -> set[int]:
    """Pids of every engine replica, from ``GET /v1/pools`` (empty on error)."""
    try:
        pools = http.get("/v1/pools").json()
    except (httpx.HTTPError, ValueError):
        return set()
    return {r["pid"] for p in pools for r in p["replicas"] if r.get("pid")}


def count_survivors(pids: Iterable[int], grace_s: float = ORPHAN_GRACE_S) -> list[int]:
    """Pids still running after ``grace_s`` seconds (zombies count as dead)."""
    deadline = time.monotonic() + grace_s
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def kill_server(server: Server) -> None:
    """SIGKILL the server process and reap it."""
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)


def step_body(rng: random.Random, token: str, model: str) -> dict[str, Any]:
    """An ``llm_call`` body that streams 200-400 tokens (sampled, temperature 0.8)."""
    return {
        "type": "llm_call", "client_token": token,
        "input": {"model": model,
                  "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
                  "params": {"temperature": 0.8, "max_tokens": rng.randint(200, 400)}},
    }


def create_runs(http: httpx.Client, n: int) -> list[str]:
    """Create ``n`` runs of the crash-loop flow; return their ids."""
    flow = http.post("/v1/flows", json={"ast_ir": {"crash_loop": 1}})
    flow.raise_for_status()
    runs = []
    for _ in range(n):
        resp = http.post(f"/v1/flows/{flow.json()['flow_id']}/runs", json={})
        resp.raise_for_status()
        runs.append(str(resp.json()["run_id"]))
    return runs


def submit_steps(loop: Loop, http: httpx.Client, cycle: int) -> list[StepRecord]:
    """Submit this cycle's steps, two per run, each with a unique client_token."""
    runs = create_runs(http, math.ceil(loop.opts.streams / 2))
    recs = []
    for i in range(loop.opts.streams):
        run_id = runs[i // 2]
        token = f"crash-{loop.opts.seed}-c{cycle}-s{i}"
        body = step_body(loop.rng, token, loop.model)
        resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
        if resp.status_code != 201:
            raise RuntimeError(f"submit {token}: HTTP {resp.status_code} {resp.text[:300]}")
        recs.append(StepRecord(cycle, run_id, token, body, str(resp.json()["step_id"])))
    return recs


def replayer(url: str, recorded: list[StepRecord], cycle: int, out: list[StepRecord],
             deadline: float) -> None:
    """Thread body: replay each record Run of ``recorded`` (the previous cycle's Steps,
    all finished after recovery), one Step every 50 ms so that kills land among the
    submissions, reading each replayed stream; every Step the server answered for is
    added to ``out`` and verified after each restart like the others (NERVE-4025)."""
    runs: dict[str, list[StepRecord]] = {}
    for rec in recorded:
        runs.setdefault(rec.run_id, []).append(rec)
    try:
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http:
            for run_id, recs in runs.items():
                flow_id = http.get(f"/v1/runs/{run_id}").json()["flow_id"]
                resp = http.post(f"/v1/flows/{flow_id}/runs",
                                 json={"mode": "replay", "replay_of": run_id})
                if resp.status_code != 201:
                    return
                rep = str(resp.json()["run_id"])
                for rec in recs:
                    resp = http.post(f"/v1/runs/{rep}/steps", json=rec.body)
                    if resp.status_code not in (200, 201):
                        return
                    new = StepRecord(cycle, rep, rec.client_token, rec.body,
                                     str(resp.json()["step_id"]), replay=True)
                    out.append(new)
                    new.reader_error = read_frames(http, new.step_id, new.received, deadline)
                    time.sleep(0.05)
    except (httpx.HTTPError, ValueError):
        return  # the server was killed


def kill_delay(rng: random.Random, max_delay_s: float) -> float:
    """Seconds from submission to SIGKILL: mostly U(0.05, ``max_delay_s``), 10 % U(0, 0.03)
    so that some kills land before the first token."""
    if rng.random() < 0.1:
        return rng.uniform(0.0, 0.03)
    return rng.uniform(0.05, max(0.05, max_delay_s))


# -- the loop --------------------------------------------------------------------------


def stream_and_kill(loop: Loop, server: Server, cycle: int) -> dict[str, Any]:
    """Submit this cycle's steps, read them in threads, SIGKILL the server at a random
    moment, then count orphans. Returns the cycle's log entry."""
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
        appenders = crash_fs.prepare_appends(loop.fs, http, cycle, loop.opts.fs_appends,
                                             loop.opts.seed, time.monotonic() + 120.0)
        previous = [r for r in loop.steps if r.cycle == cycle - 1 and not r.replay]
        recs = submit_steps(loop, http, cycle)
        loop.steps.extend(recs)
        t0 = time.monotonic()
        replays: list[StepRecord] = []
        threads = [threading.Thread(target=reader, daemon=True,
                                    args=(server.url, rec, t0 + 120.0, i % 2 == 1))
                   for i, rec in enumerate(recs)] + appenders + [threading.Thread(
                       target=replayer, daemon=True,
                       args=(server.url, previous, cycle, replays, t0 + 120.0))]
        for t in threads:
            t.start()
        delay = kill_delay(loop.rng, loop.opts.max_delay_s)
        pids = replica_pids(http)
    time.sleep(max(0.0, t0 + delay - time.monotonic()))
    children = descendants(server.proc.pid)
    kill_server(server)
    for t in threads:
        t.join(READER_JOIN_S)
    loop.steps.extend(replays)
    survivors = count_survivors(pids | children)
    loop.tally.add("orphan_processes", "alive_after_sigkill", len(survivors),
                   f"cycle {cycle}: pids {survivors} survived the server's SIGKILL")
    temp_at_kill = len(crash_fs.count_temp_files(loop.data_dir / "sandboxes"))
    loop.fs.temp_files_after_kill += temp_at_kill
    return {"cycle": cycle, "kill_after_s": round(delay, 3),
            "fs_appends_acknowledged": sum(a.acknowledged for a in loop.fs.appends
                                           if a.cycle == cycle),
            "temp_files_at_kill": temp_at_kill,
            "replica_pids": sorted(pids), "child_pids": sorted(children),
            "survivors": survivors,
            "replays_answered": len(replays),
            "frames_received": [len(r.received) for r in recs],
            "tokens_received": [sum(f.event == "token" for f in r.received) for r in recs]}


def run_cycle(loop: Loop, cycle: int) -> None:
    """Start (recovering the previous crash), verify everything, stream, kill."""
    server = start(loop)
    try:
        check_temp_files(loop, f"after the restart before cycle {cycle}")
        verify_all(loop, server)
        entry = stream_and_kill(loop, server, cycle)
    finally:
        if server.proc.poll() is None:
            kill_server(server)
    check_integrity(loop, f"after the SIGKILL of cycle {cycle}")
    loop.cycle_log.append(entry)


def final_check(loop: Loop) -> int:
    """Restart once more, verify, stop cleanly (SIGTERM); count surviving replicas.

    Returns:
        The server's exit code after SIGTERM.
    """
    server = start(loop)
    try:
        check_temp_files(loop, "after the final restart")
        verify_all(loop, server)
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
            pids = replica_pids(http)
            lost = crash_fs.lost_appends(loop.fs, http)
        for kind, n in sorted(lost.items()):
            loop.tally.add("lost_appends", kind, n, f"{n} acknowledged append(s) {kind}")
        pids |= descendants(server.proc.pid)
    finally:
        code = stop_server(server.proc)
    survivors = count_survivors(pids)
    loop.tally.add("orphan_processes", "alive_after_clean_stop", len(survivors),
                   f"pids {survivors} survived the final SIGTERM")
    check_integrity(loop, "after the final clean stop")
    check_temp_files(loop, "after the final clean stop")
    return code


def make_loop(opts: Options, data_dir: pathlib.Path) -> Loop:
    """Write the config into the data directory and set up the loop state."""
    config = build_config(opts.mock, data_dir)
    return Loop(opts=opts, rng=random.Random(opts.seed), data_dir=data_dir,  # noqa: S311
                config_path=write_config(config, data_dir),
                model=config.pools[0].models[0].id)


def run_crash_loop(opts: Options, data_dir: pathlib.Path) -> dict[str, Any]:
    """Run the cycles and the final check; return the report (see :func:`render`)."""
    loop = make_loop(opts, data_dir)
    t0 = time.monotonic()
    error = None
    exit_code = None
    try:
        for cycle in range(1, opts.cycles + 1):
            if time.monotonic() - t0 > opts.time_limit_s:
                error = f"time limit of {opts.time_limit_s} s reached before cycle {cycle}"
                break
            run_cycle(loop, cycle)
            if not opts.as_json:
                last = loop.cycle_log[-1]
                print(f"cycle {cycle}/{opts.cycles}: killed after {last['kill_after_s']} s, "
                      f"tokens received {last['tokens_received']}", file=sys.stderr,
                      flush=True)
    except LOOP_ERRORS as exc:
        error = f"cycle {len(loop.cycle_log) + 1}: {type(exc).__name__}: {exc}"
    try:  # verify and stop cleanly even after an error, so the figures stay meaningful
        exit_code = final_check(loop)
    except LOOP_ERRORS as exc:
        error = error or f"final check: {type(exc).__name__}: {exc}"
    return build_report(loop, time.monotonic() - t0, error, exit_code)


def build_report(loop: Loop, wall_s: float, error: str | None,
                 exit_code: int | None) -> dict[str, Any]:
    """The report: counts, the figures, their details and per-cycle notes."""
    statuses = collections.Counter(r.final_status or "unverified" for r in loop.steps)
    return {
        "engine": "mock" if loop.opts.mock else "llama.cpp",
        "model": loop.model,
        "seed": loop.opts.seed,
        "data_dir": str(loop.data_dir),
        "cycles_requested": loop.opts.cycles,
        "cycles": len(loop.cycle_log),
        "streams_per_cycle": loop.opts.streams,
        "kill_window_s": [0.0, loop.opts.max_delay_s],
        "steps": len(loop.steps),
        "step_statuses": dict(sorted(statuses.items())),
        "frames_received": sum(len(r.received) for r in loop.steps),
        "frames_checked": loop.frames_checked,
        "log_frames": sum(r.log_frames for r in loop.steps),
        "verifications": loop.verifications,
        "fs": loop.fs.summary(),
        "figures": loop.tally.figures(),
        "details": dict(sorted(loop.tally.counts.items())),
        "examples": loop.tally.examples,
        "final_stop_exit_code": exit_code,
        "wall_s": round(wall_s, 1),
        "error": error,
        "cycle_log": loop.cycle_log,
    }


def render(report: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        f"crash loop: {report['cycles']}/{report['cycles_requested']} kill -9 cycles, "
        f"engine {report['engine']} ({report['model']}), seed {report['seed']}",
        f"data dir: {report['data_dir']}   wall time: {report['wall_s']} s",
        f"kill moment: 0-{report['kill_window_s'][1]} s after submission  "
        f"steps: {report['steps']} ({report['streams_per_cycle']} per cycle)",
        f"step statuses after recovery: {report['step_statuses']}",
        f"frames received by live readers: {report['frames_received']}  "
        f"checked against the log (all restarts): {report['frames_checked']}  "
        f"frames in step logs: {report['log_frames']}",
        f"verifications (restarts): {report['verifications']}  "
        f"final SIGTERM exit code: {report['final_stop_exit_code']}",
        "fs appends (parent + fork on one root): {appends_submitted} submitted, "
        "{appends_acknowledged} acknowledged; temp files seen right after the kills: "
        "{temp_files_seen_after_kills}".format(**report["fs"]),
        "",
    ]
    labels = {"lost_events": "lost events", "duplicated_tokens": "duplicated tokens",
              "orphan_processes": "orphan engine processes",
              "broken_idempotency": "broken idempotency",
              "counter_mismatches": "counter mismatches",
              "lost_appends": "lost acknowledged appends",
              "leftover_temp_files": "leftover temp files"}
    lines += [f"  {labels[k]:<26}{v}" for k, v in report["figures"].items()]
    lines += [f"    {k}: {v}" for k, v in report["details"].items()]
    lines += [f"  e.g. {e}" for e in report["examples"]]
    if report["error"]:
        lines.append(f"ERROR: {report['error']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    """Parse the command line into :class:`Options`."""
    p = argparse.ArgumentParser(prog="python -m tools.crash_loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=50, help="kill -9 cycles (default 50)")
    p.add_argument("--streams", type=int, default=4,
                   help="concurrent streaming steps per cycle (default 4)")
    p.add_argument("--seed", type=int, default=20261121,
                   help="random seed for kill timing and step params")
    p.add_argument("--mock", action="store_true", help="mock engine at 300 tokens/s")
    p.add_argument("--data-dir", type=pathlib.Path, default=None,
                   help="shared data directory (default: a new temporary directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--max-delay", type=float, default=None,
                   help="latest kill moment after submission in seconds (default 1.5 with "
                        "--mock, 3.0 with llama.cpp, whose first token takes ~0.6 s)")
    p.add_argument("--time-limit", type=float, default=3600.0,
                   help="start no new cycle after this many seconds (default 3600)")
    p.add_argument("--fs-appends", type=int, default=30,
                   help="fs_op appends per Run (a parent and its fork share one root) per "
                        "cycle (default 30)")
    a = p.parse_args(argv)
    if a.cycles < 1 or a.streams < 1 or a.fs_appends < 1:
        p.error("--cycles, --streams and --fs-appends must be at least 1")
    return Options(cycles=a.cycles, streams=a.streams, seed=a.seed, mock=a.mock,
                   data_dir=a.data_dir, as_json=a.json, time_limit_s=a.time_limit,
                   max_delay_s=a.max_delay if a.max_delay is not None
                   else (1.5 if a.mock else 3.0), fs_appends=a.fs_appends)


def main(argv: list[str] | None = None) -> int:
    """Run the crash loop and print the report; 1 when any figure is non-zero."""
    opts = parse_args(argv)
    data_dir = opts.data_dir or pathlib.Path(tempfile.mkdtemp(prefix="crash-loop-"))
    report = run_crash_loop(opts, data_dir)
    print(json.dumps(report, indent=2) if opts.as_json else render(report))
    failed = any(report["figures"].values()) or report["error"] is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
