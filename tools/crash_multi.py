"""Multi-process crash loop: three orchestratord processes over one PostgreSQL schema,
``kill -9`` of a random one while Steps stream, readers reconnecting to another process
with ``Last-Event-ID`` (issue 16; PG-9102..PG-9107, PG-9120).

``python -m tools.crash_multi [--processes 3] [--cycles 50] [--streams 6] [--remote 4]
[--slots 2] [--store DSN]`` starts a throwaway cluster unless ``--store`` names one, one
shared remote replica (:mod:`tools.bench.mock_openai`, one token chunk every 20 ms,
counting the completions it serves at once) and the processes (200 ms heartbeat, 600 ms
lease), each with two pools: the in-process mock engine (30 tokens/s) and ``http-0``, an
``openai_http`` pool (dialect ``llama-server``, declared batch-invariant so that every
slot serves a record Step, PLACE-5005) whose one replica is that shared server with
``--slots`` slots. Every cycle submits ``--streams`` Steps, the first ``--remote`` of
them to the shared replica (16 tokens) and the others to the mock engine (40 tokens), each
to a random process, and reads each one from a random process; then it kills a random
process with SIGKILL and restarts it on its data directory. A reader whose connection
broke reconnects to another live process with ``Last-Event-ID``. After the cycle every
Step must be terminal, and the report counts, all of which must be 0:

* **lost events**: a Step whose frames as its reader received them differ from its log
  read afresh, or whose log does not end with a terminal frame;
* **duplicated tokens**: frame ids that are not exactly ``0..n`` for a reader, or a
  token frame received twice;
* **owned by two**: a Step whose frames were written by two owners at once: two terminal
  frames or a frame after the terminal one in its log, or a Step taken from a process
  that was never killed (its owner once it was submitted, a process this loop did not
  kill, differs from its owner at the end: a survivor adopted the Steps of a live
  process);
* **left to a dead owner**: a ``queued``/``running`` Step whose owner is no live process
  once the lease has passed (the survivors must have adopted it);
* **broken idempotency**: a re-POST of a Step's body with its ``client_token`` to another
  process, then to a third, that does not answer the same ``step_id`` (200) both times
  (an ``INTERRUPTED`` Step is retriable, so its first re-POST makes the next attempt,
  201, which the second must answer), or two rows for one ``(token, attempt)``;
* **slot overcommit**: ``max(0, m - slots)`` where ``m`` is the most completions the
  shared replica served at once (open requests: a killed process's request stops counting
  when its connection drops), counted over every process and every cycle (PG-9107).

The exit code is 1 when any figure is non-zero (:meth:`Tally.failures`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import msgspec

from orchestrator_core.config import mock_config
from tools import pg_cluster
from tools.bench import mock_openai
from tools.bench.overhead import http_pool
from tools.servers import start_server, stop_server

__all__ = ["FIGURES", "Tally", "judge_log", "main", "slot_overcommit"]

SCHEMA = "crash_multi"
CHUNK_DELAY_MS = 20
"""The shared replica's pause before each token chunk (ms), so that requests overlap."""
REMOTE_TOKENS = 16
"""Tokens of each Step on the shared replica."""
FIGURES = ("lost_events", "duplicated_tokens", "owned_by_two", "left_to_dead_owner",
           "broken_idempotency", "slot_overcommit")
"""The figures of the report that must all be 0."""
TERMINAL = ("end", "error")


class Tally(msgspec.Struct):
    """The figures of the report (:data:`FIGURES`, all must be 0), then how much was
    exercised: cycles, Steps checked (``remote_steps`` of them on the shared replica),
    kills, reader reconnections, the slots of the shared replica, the most completions it
    served at once and how many it served in all."""

    lost_events: int = 0
    duplicated_tokens: int = 0
    owned_by_two: int = 0
    left_to_dead_owner: int = 0
    broken_idempotency: int = 0
    slot_overcommit: int = 0
    cycles: int = 0
    steps: int = 0
    remote_steps: int = 0
    kills: int = 0
    reconnects: int = 0
    slots: int = 0
    max_concurrent: int = 0
    remote_completions: int = 0

    def failures(self) -> dict[str, int]:
        """The non-zero figures of :data:`FIGURES` (empty: the loop passed).

        Returns:
            ``{figure: count}`` for each figure above 0, in :data:`FIGURES` order.
        """
        return {f: getattr(self, f) for f in FIGURES if getattr(self, f) > 0}


def slot_overcommit(max_concurrent: int, slots: int) -> int:
    """How far the shared replica went over its slots (PG-9107).

    Args:
        max_concurrent: the most completions it served at once (``GET /stats`` ``max``).
        slots: its ``slots_per_replica``.

    Returns:
        ``max(0, max_concurrent - slots)``.
    """
    return max(0, max_concurrent - slots)


def judge_log(got: list[tuple[int, str, str]],
              log: list[tuple[int, str, str]]) -> tuple[int, int, int]:
    """Compare what a reader received with the Step's log read afresh afterwards.

    Args:
        got: ``(id, event, data)`` of each durable frame the reader received, in order,
            across its reconnections.
        log: the same for the whole log, read once the Step ended.

    Returns:
        ``(lost, duplicated, two_writers)``, each 0 or 1: ``lost`` when ``got`` differs
        from ``log`` or the log does not end with a terminal frame; ``duplicated`` when
        the received ids are not exactly ``0..n`` (a frame received twice or skipped);
        ``two_writers`` when the log holds more than one terminal frame or a frame after
        its first terminal one.
    """
    ids = [f[0] for f in got]
    duplicated = int(ids != list(range(len(ids))))
    lost = int(got != log or not log or log[-1][1] not in TERMINAL)
    ends = [k for k, f in enumerate(log) if f[1] in TERMINAL]
    two = int(len(ends) > 1 or (bool(ends) and ends[0] != len(log) - 1))
    return lost, duplicated, two


def _frames(raw: bytes) -> list[tuple[int, str, str]]:
    out = []
    for block in raw.decode(errors="replace").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "id" in fields:
            out.append((int(fields["id"]), fields.get("event", ""), fields.get("data", "")))
    return out


def _read(urls: list[str], alive: list[bool], step_id: str, tally: Tally,
          got: list[tuple[int, str, str]]) -> None:
    """Read a Step to its terminal frame, reconnecting to a live process on a break."""
    last = -1
    for _attempt in range(40):
        live = [u for u, ok in zip(urls, alive, strict=True) if ok]
        url = random.choice(live or urls)  # noqa: S311 - not for security
        headers = {"Last-Event-ID": str(last)} if last >= 0 else {}
        try:
            with httpx.Client(base_url=url, timeout=30.0) as http, http.stream(
                    "GET", f"/v1/steps/{step_id}/stream", headers=headers) as s:
                buf = b""
                for chunk in s.iter_raw():
                    buf += chunk
                    *blocks, buf = buf.split(b"\n\n")
                    for frame in _frames(b"\n\n".join(blocks) + b"\n\n"):
                        got.append(frame)
                        last = frame[0]
                        if frame[1] in ("end", "error"):
                            return
                if s.status_code == 204:
                    return
        except httpx.HTTPError:
            pass
        tally.reconnects += 1
        time.sleep(0.2)


def _owners(dsn: str, step_ids: list[str]) -> dict[str, str | None]:
    """``{step_id: owner}`` from ``steps`` (PG-9100)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {SCHEMA}")
        rows = con.execute("SELECT step_id, owner FROM steps WHERE step_id = ANY(%s)",
                           (step_ids,)).fetchall()
    return {str(r[0]): (str(r[1]) if r[1] is not None else None) for r in rows}


def _process_id(dsn: str, data_dir: pathlib.Path) -> str | None:
    """The process id a server on ``data_dir`` registered (its node ends with the data
    directory, PG-9102), or None."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {SCHEMA}")
        row = con.execute("SELECT process_id FROM processes WHERE node LIKE %s"
                          " ORDER BY started DESC LIMIT 1",
                          (f"%:{data_dir.resolve()}",)).fetchone()
    return str(row[0]) if row else None


def _check(url: str, dsn: str, body: dict[str, Any], step_id: str, run_id: str,
           got: list[tuple[int, str, str]], other: str, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as http, \
            http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        log = _frames(b"".join(s.iter_bytes()))
    lost, duplicated, two = judge_log(got, log)
    tally.lost_events += lost
    tally.duplicated_tokens += duplicated
    tally.owned_by_two += two
    if lost or duplicated or two:
        print(f"{step_id}: lost {lost} duplicated {duplicated} two writers {two}; received"
              f" ids {[f[0] for f in got]}, log {[(f[0], f[1]) for f in log]}",
              file=sys.stderr)
    # an INTERRUPTED Step is retriable: its re-POST makes the next attempt, which must
    # then be one Step whichever process takes the body again
    retried = bool(log) and log[-1][1] == "error"
    with httpx.Client(base_url=other, timeout=30.0) as http:
        again = http.post(f"/v1/runs/{run_id}/steps", json=body)
    expected = again.json().get("step_id") if retried else step_id
    with httpx.Client(base_url=url, timeout=30.0) as http:
        third = http.post(f"/v1/runs/{run_id}/steps", json=body)
    if (again.status_code != (201 if retried else 200) or third.status_code != 200
            or again.json().get("step_id") != expected
            or third.json().get("step_id") != expected):
        tally.broken_idempotency += 1
        print(f"re-POST of {step_id}: {again.status_code} {third.status_code}",
              file=sys.stderr)
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute(f"SET search_path TO {SCHEMA}")
        row = con.execute("SELECT count(*) FROM (SELECT attempt FROM steps WHERE run_id = %s"
                          " AND client_token = %s GROUP BY attempt HAVING count(*) > 1) d",
                          (run_id, body["client_token"])).fetchone()
    if row is None or row[0] != 0:
        tally.broken_idempotency += 1


def _step_body(cycle: int, k: int, remote: int) -> dict[str, Any]:
    """The ``k``-th Step of a cycle: on the shared replica for ``k < remote``."""
    if k < remote:
        return {"type": "llm_call", "client_token": f"c{cycle}-{k}",
                "input": {"model": mock_openai.MODEL, "prompt": f"cycle {cycle} {k}",
                          "params": {"max_tokens": REMOTE_TOKENS}}}
    return {"type": "llm_call", "client_token": f"c{cycle}-{k}",
            "input": {"model": "mock:echo-1", "prompt": f"cycle {cycle} {k}"}}


def run(dsn: str, processes: int, cycles: int, streams: int, work: pathlib.Path, *,
        remote: int = 4, slots: int = 2) -> Tally:
    """The loop (see the module docstring); returns its figures."""
    replica, upstream = mock_openai.spawn(CHUNK_DELAY_MS)
    cfg = mock_config(mock_options={"tokens_per_s": 30, "length": 40},
                      store_heartbeat_ms=200, store_lease_ms=600)
    cfg = msgspec.structs.replace(cfg, pools=[*cfg.pools, http_pool(
        upstream, slots, batch_invariant=True)])
    path = work / "config.json"
    path.write_bytes(msgspec.json.encode(cfg))
    dirs = [work / f"srv{i}" for i in range(processes)]
    for d in dirs:
        d.mkdir()
    extra = ["--config", str(path), "--store", dsn, "--store-schema", SCHEMA]
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    lives: dict[str, bool] = {}  # process id -> killed by this loop
    for d in dirs:
        proc, url = start_server(data_dir=str(d), extra=extra)
        procs.append(proc)
        urls.append(url)
    pids = [_process_id(dsn, d) for d in dirs]
    lives.update({pid: False for pid in pids if pid})
    alive = [True] * processes
    tally = Tally(slots=slots)
    try:
        with httpx.Client(base_url=urls[0], timeout=30.0) as http:
            flow = http.post("/v1/flows", json={"ast_ir": {"crash": "multi"}}).json()
            run_id = http.post(f"/v1/flows/{flow['flow_id']}/runs",
                               json={"seed": 7}).json()["run_id"]
        for cycle in range(cycles):
            tally.cycles += 1
            submitted = []
            for k in range(streams):
                body = _step_body(cycle, k, remote)
                url = random.choice(urls)  # noqa: S311 - not for security
                with httpx.Client(base_url=url, timeout=30.0) as http:
                    resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
                if resp.status_code in (200, 201):
                    submitted.append((body, resp.json()["step_id"]))
                else:
                    print(f"submit {body['client_token']}: {resp.status_code} "
                          f"{resp.text[:200]}", file=sys.stderr)
            first_owner = _owners(dsn, [step_id for _b, step_id in submitted])
            readers = []
            for body, step_id in submitted:
                got: list[tuple[int, str, str]] = []
                t = threading.Thread(target=_read, args=(urls, alive, step_id, tally, got))
                t.start()
                readers.append((body, step_id, got, t))
            delay = random.uniform(0.1, 1.0)  # noqa: S311 - not for security
            time.sleep(delay)
            victim = random.randrange(processes)  # noqa: S311 - not for security
            alive[victim] = False
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            dead = pids[victim]
            if dead:
                lives[dead] = True
            tally.kills += 1
            for _body, _step_id, _got, t in readers:
                t.join(timeout=60)
            procs[victim], urls[victim] = start_server(data_dir=str(dirs[victim]), extra=extra)
            born = pids[victim] = _process_id(dsn, dirs[victim])
            if born:
                lives[born] = False
            alive[victim] = True
            last_owner = _owners(dsn, [step_id for _b, step_id in submitted])
            for body, step_id, got, _t in readers:
                tally.steps += 1
                tally.remote_steps += int(body["input"]["model"] == mock_openai.MODEL)
                other = urls[(urls.index(random.choice(urls)) + 1) % processes]  # noqa: S311
                _check(urls[0], dsn, body, step_id, run_id, got, other, tally)
                owner = first_owner.get(step_id)
                if (owner is not None and owner in lives and not lives[owner]
                        and last_owner.get(step_id) != owner):
                    tally.owned_by_two += 1
                    print(f"{step_id}: taken from {owner}, a process never killed, by "
                          f"{last_owner.get(step_id)}", file=sys.stderr)
            print(f"cycle {cycle + 1}/{cycles}: killed srv{victim} {delay:.2f} s after "
                  f"submitting {len(submitted)} Steps; failures so far {tally.failures()}",
                  file=sys.stderr, flush=True)
        time.sleep(1.0)  # a lease and more: nothing may stay unadopted
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"SET search_path TO {SCHEMA}")
            row = con.execute("SELECT count(*) FROM steps WHERE status IN ('queued', 'running')"
                              " AND (owner IS NULL OR owner NOT IN"
                              " (SELECT process_id FROM processes))").fetchone()
        tally.left_to_dead_owner += int(row[0]) if row else 0
        seen = mock_openai.stats(upstream)
        tally.max_concurrent = seen["max"]
        tally.remote_completions = seen["total"]
        tally.slot_overcommit = slot_overcommit(seen["max"], slots)
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_server(proc)
        replica.terminate()
        replica.wait(timeout=10)
    return tally


def main(argv: list[str] | None = None) -> int:
    """Run the loop and print the report.

    Args:
        argv: ``[--processes N] [--cycles N] [--streams N] [--remote N] [--slots N]
            [--store DSN] [--json]``.

    Returns:
        0 when every figure is 0, else 1.
    """
    p = argparse.ArgumentParser(prog="python -m tools.crash_multi", description=__doc__)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--cycles", type=int, default=50)
    p.add_argument("--streams", type=int, default=6)
    p.add_argument("--remote", type=int, default=4,
                   help="Steps per cycle on the shared replica (the first ones; default 4)")
    p.add_argument("--slots", type=int, default=2,
                   help="slots_per_replica of the shared replica (default 2)")
    p.add_argument("--store", default="")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="orch-crash-multi-"))
    db = None if args.store else pathlib.Path(tempfile.mkdtemp(prefix="orch-crash-db-"))
    dsn = args.store or pg_cluster.start_cluster(db)  # type: ignore[arg-type]
    try:
        tally = run(dsn, args.processes, args.cycles, args.streams, work,
                    remote=args.remote, slots=args.slots)
    finally:
        if db is not None:
            pg_cluster.stop_cluster(db)
    if args.json:
        sys.stdout.write(msgspec.json.encode(tally).decode() + "\n")
    else:
        for name in Tally.__struct_fields__:
            print(f"{name}: {getattr(tally, name)}")
    failures = tally.failures()
    if failures:
        print(f"FAILED: {failures}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
