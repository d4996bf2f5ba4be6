"""Multi-process crash loop: three orchestratord processes over one PostgreSQL schema,
``kill -9`` of a random one while Steps stream, readers reconnecting to another process
with ``Last-Event-ID`` (issue 16; PG-9102, PG-9103, PG-9104).

``python -m tools.crash_multi [--processes 3] [--cycles 50] [--streams 6] [--store DSN]``
starts a throwaway cluster unless ``--store`` names one, and the processes (mock engine,
30 tokens/s, 200 ms heartbeat, 600 ms lease). Every cycle submits ``--streams`` Steps, each
to a random process, and reads each one from a random process; then it kills a random
process with SIGKILL and restarts it on its data directory. A reader whose connection
broke reconnects to another live process with ``Last-Event-ID``. After the cycle every
Step must be terminal, and the report counts, all of which must be 0:

* **lost events**: a Step whose frames as its reader received them differ from its log
  read afresh, or whose log does not end with exactly one terminal frame;
* **duplicated tokens**: frame ids that are not exactly ``0..n`` for a reader, or a
  token frame received twice;
* **owned by two**: a ``queued``/``running`` Step left with an owner that is no live
  process once the lease has passed (the survivors must have adopted it), or a Step
  whose terminal frame came from two processes (two terminal frames);
* **broken idempotency**: a re-POST of a Step's body with its ``client_token`` to another
  process, then to a third, that does not answer the same ``step_id`` (200) both times
  (an ``INTERRUPTED`` Step is retriable, so its first re-POST makes the next attempt,
  201, which the second must answer), or two rows for one ``(token, attempt)``.

Slot overcommit is measured by ``test_harness/integration/test_pg_multi_slots.py`` against a
counting remote replica; the mock engine of this loop has no shared slots, so it is not
counted here. The exit code is 1 when any figure is non-zero.
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
from tools.servers import start_server, stop_server

__all__ = ["Tally", "main"]

SCHEMA = "crash_multi"


class Tally(msgspec.Struct):
    """The figures of the report (all must be 0), and how much was exercised."""

    lost_events: int = 0
    duplicated_tokens: int = 0
    owned_by_two: int = 0
    broken_idempotency: int = 0
    cycles: int = 0
    steps: int = 0
    kills: int = 0
    reconnects: int = 0


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


def _check(url: str, dsn: str, body: dict[str, Any], step_id: str, run_id: str,
           got: list[tuple[int, str, str]], other: str, tally: Tally) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as http, \
            http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        log = _frames(b"".join(s.iter_bytes()))
    ids = [f[0] for f in got]
    if ids != list(range(len(ids))) or len(set(ids)) != len(ids):
        tally.duplicated_tokens += 1
    terminals = [f for f in log if f[1] in ("end", "error")]
    if got != log or len(terminals) != 1 or log[-1][1] not in ("end", "error"):
        tally.lost_events += 1
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


def run(dsn: str, processes: int, cycles: int, streams: int, work: pathlib.Path) -> Tally:
    """The loop (see the module docstring); returns its figures."""
    cfg = mock_config(mock_options={"tokens_per_s": 30, "length": 40},
                      store_heartbeat_ms=200, store_lease_ms=600)
    path = work / "config.json"
    path.write_bytes(msgspec.json.encode(cfg))
    dirs = [work / f"srv{i}" for i in range(processes)]
    for d in dirs:
        d.mkdir()
    extra = ["--config", str(path), "--store", dsn, "--store-schema", SCHEMA]
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    for d in dirs:
        proc, url = start_server(data_dir=str(d), extra=extra)
        procs.append(proc)
        urls.append(url)
    alive = [True] * processes
    tally = Tally()
    try:
        with httpx.Client(base_url=urls[0], timeout=30.0) as http:
            flow = http.post("/v1/flows", json={"ast_ir": {"crash": "multi"}}).json()
            run_id = http.post(f"/v1/flows/{flow['flow_id']}/runs",
                               json={"seed": 7}).json()["run_id"]
        for cycle in range(cycles):
            tally.cycles += 1
            submitted = []
            for k in range(streams):
                body = {"type": "llm_call", "client_token": f"c{cycle}-{k}",
                        "input": {"model": "mock:echo-1", "prompt": f"cycle {cycle} {k}"}}
                url = random.choice(urls)  # noqa: S311 - not for security
                with httpx.Client(base_url=url, timeout=30.0) as http:
                    resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
                if resp.status_code in (200, 201):
                    submitted.append((body, resp.json()["step_id"]))
            readers = []
            for body, step_id in submitted:
                got: list[tuple[int, str, str]] = []
                t = threading.Thread(target=_read, args=(urls, alive, step_id, tally, got))
                t.start()
                readers.append((body, step_id, got, t))
            time.sleep(random.uniform(0.1, 1.0))  # noqa: S311 - not for security
            victim = random.randrange(processes)  # noqa: S311 - not for security
            alive[victim] = False
            os.kill(procs[victim].pid, signal.SIGKILL)
            procs[victim].wait()
            tally.kills += 1
            for _body, _step_id, _got, t in readers:
                t.join(timeout=60)
            procs[victim], urls[victim] = start_server(data_dir=str(dirs[victim]), extra=extra)
            alive[victim] = True
            for body, step_id, got, _t in readers:
                tally.steps += 1
                other = urls[(urls.index(random.choice(urls)) + 1) % processes]  # noqa: S311
                _check(urls[0], dsn, body, step_id, run_id, got, other, tally)
        time.sleep(1.0)  # a lease and more: nothing may stay unadopted
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute(f"SET search_path TO {SCHEMA}")
            row = con.execute("SELECT count(*) FROM steps WHERE status IN ('queued', 'running')"
                              " AND (owner IS NULL OR owner NOT IN"
                              " (SELECT process_id FROM processes))").fetchone()
        tally.owned_by_two += int(row[0]) if row else 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_server(proc)
    return tally


def main(argv: list[str] | None = None) -> int:
    """Run the loop and print the report.

    Args:
        argv: ``[--processes N] [--cycles N] [--streams N] [--store DSN] [--json]``.

    Returns:
        0 when every figure is 0, else 1.
    """
    p = argparse.ArgumentParser(prog="python -m tools.crash_multi", description=__doc__)
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--cycles", type=int, default=50)
    p.add_argument("--streams", type=int, default=6)
    p.add_argument("--store", default="")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    work = pathlib.Path(tempfile.mkdtemp(prefix="orch-crash-multi-"))
    db = None if args.store else pathlib.Path(tempfile.mkdtemp(prefix="orch-crash-db-"))
    dsn = args.store or pg_cluster.start_cluster(db)  # type: ignore[arg-type]
    try:
        tally = run(dsn, args.processes, args.cycles, args.streams, work)
    finally:
        if db is not None:
            pg_cluster.stop_cluster(db)
    if args.json:
        sys.stdout.write(msgspec.json.encode(tally).decode() + "\n")
    else:
        for name in Tally.__struct_fields__:
            print(f"{name}: {getattr(tally, name)}")
    bad = (tally.lost_events, tally.duplicated_tokens, tally.owned_by_two,
           tally.broken_idempotency)
    return 1 if any(bad) else 0


if __name__ == "__main__":
    raise SystemExit(main())
