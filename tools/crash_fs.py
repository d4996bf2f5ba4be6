"""The crash loop's file-system workload: a Run and its fork append to one root (POLICY-3012).

Each cycle creates a record Run whose ``fs_policy`` names the relative root
``crash-fs/c<cycle>``, checkpoints it, forks a second Run from that checkpoint naming the
same root, and starts one thread per Run that appends distinct lines to ``log.txt``, one
``fs_op`` after another (POST, then its SSE stream to the terminal frame), until its quota
of appends is done or the server dies. Both threads run while the server is killed.

Two figures come out of it, both of which must be 0:

* **lost acknowledged appends**: an append whose ``end`` frame the client received but
  whose line is not in the file exactly once, or whose step is not ``succeeded`` after
  the restart;
* **leftover temp files**: files named ``.fsbroker-*.tmp`` anywhere under the sandbox
  parent after a restart (recovery must have removed them) or after the final clean stop.
"""

from __future__ import annotations

import collections
import os
import pathlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from test_harness.support import parse_sse

__all__ = ["AppendRecord", "FsWorkload", "count_temp_files", "lost_appends", "prepare_appends"]

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
"""Each append's POST and stream read (seconds)."""
FILE = "log.txt"


@dataclass
class AppendRecord:
    """One append a worker attempted.

    Attributes:
        cycle: its cycle (1-based).
        run_id: the Run (parent or fork) it was submitted to.
        line: the distinct line it appends (without the newline).
        root: the sandbox directory on disk.
        step_id: the server's id, once the POST was accepted.
        acknowledged: the client received its ``end`` frame.
        status: the step's status after the final restart.
    """

    cycle: int
    run_id: str
    line: str
    root: pathlib.Path
    step_id: str | None = None
    acknowledged: bool = False
    status: str = ""


@dataclass
class FsWorkload:
    """Every append of the loop, and what the kills left behind."""

    appends: list[AppendRecord] = field(default_factory=list)
    temp_files_after_kill: int = 0
    roots: list[pathlib.Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts for the report."""
        return {"appends_submitted": sum(a.step_id is not None for a in self.appends),
                "appends_acknowledged": sum(a.acknowledged for a in self.appends),
                "temp_files_seen_after_kills": self.temp_files_after_kill,
                "shared_roots": len(self.roots)}


def _post(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = http.post(path, json=body)
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"POST {path}: HTTP {resp.status_code} {resp.text[:300]}")
    out: dict[str, Any] = resp.json()
    return out


def _parent_and_fork(http: httpx.Client, cycle: int) -> tuple[list[str], pathlib.Path]:
    """A record Run and its fork from a checkpoint, both naming ``crash-fs/c<cycle>``."""
    parents = http.get("/v1/capabilities").json()["sandbox_parents"]
    if not parents:
        raise RuntimeError("the server offers no sandbox directory")
    rel = f"crash-fs/c{cycle}"
    policy = {"roots": [rel], "allow": {"append": [FILE]}}
    flow = _post(http, "/v1/flows", {"ast_ir": {"crash_loop_fs": 1}})["flow_id"]
    parent = _post(http, f"/v1/flows/{flow}/runs", {"fs_policy": policy})["run_id"]
    ckpt = _post(http, f"/v1/runs/{parent}/checkpoint", {"snapshot": {"cycle": cycle}})
    fork = _post(http, f"/v1/flows/{flow}/runs", {
        "from_checkpoint": ckpt["checkpoint_id"], "fs_policy": policy})["run_id"]
    return [str(parent), str(fork)], pathlib.Path(parents[0]) / rel


def _append_one(http: httpx.Client, rec: AppendRecord, token: str) -> bool:
    """Submit one append and read its stream; False when the server is gone."""
    try:
        resp = http.post(f"/v1/runs/{rec.run_id}/steps", json={
            "type": "fs_op", "client_token": token,
            "input": {"op": "append", "path": FILE, "content": rec.line + "\n"}})
        if resp.status_code != 201:
            return False
        rec.step_id = str(resp.json()["step_id"])
        buf = b""
        with http.stream("GET", f"/v1/steps/{rec.step_id}/stream") as s:
            for chunk in s.iter_bytes():
                buf += chunk
                head, sep, buf = buf.rpartition(b"\n\n")
                events = [f.get("event") for f in parse_sse(head + sep) if f["id"] is not None]
                if "end" in events:
                    rec.acknowledged = True
                    return True
                if "error" in events:
                    return True
    except httpx.HTTPError:
        return False
    return False


def _worker(url: str, recs: list[AppendRecord], deadline: float) -> None:
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT) as http:
        for rec in recs:
            if time.monotonic() > deadline or not _append_one(http, rec, rec.line):
                return


def prepare_appends(work: FsWorkload, http: httpx.Client, cycle: int, per_run: int,
                    seed: int, deadline: float) -> list[threading.Thread]:
    """Set up this cycle's parent and fork; return one (unstarted) append thread per Run.

    Args:
        work: the loop's workload state (records are added to it).
        http: a client of the running server (set-up requests).
        cycle: the cycle (1-based); it names the root.
        per_run: appends each thread attempts.
        seed: the loop's seed, part of each line so lines are unique across loops.
        deadline: ``time.monotonic()`` after which a thread submits nothing more.

    Returns:
        The threads; the caller starts them with the streams and joins them after the
        kill.

    Raises:
        RuntimeError: a set-up request was refused.
    """
    runs, root = _parent_and_fork(http, cycle)
    work.roots.append(root)
    threads = []
    for r, run_id in enumerate(runs):
        recs = [AppendRecord(cycle, run_id, f"fs-{seed}-c{cycle}-{'pf'[r]}{i}", root)
                for i in range(per_run)]
        work.appends.extend(recs)
        threads.append(threading.Thread(target=_worker, daemon=True,
                                        args=(str(http.base_url), recs, deadline)))
    return threads


def count_temp_files(parent: pathlib.Path) -> list[str]:
    """Paths of every ``.fsbroker-*.tmp`` under ``parent`` (no symlink followed)."""
    found = []
    for dirpath, _dirs, files in os.walk(parent, followlinks=False):
        found += [os.path.join(dirpath, n) for n in files
                  if n.startswith(".fsbroker-") and n.endswith(".tmp")]
    return sorted(found)


def lost_appends(work: FsWorkload, http: httpx.Client) -> collections.Counter[str]:
    """Check every acknowledged append against its file and its step after a restart.

    Returns:
        Failures by kind: ``missing`` (line absent), ``repeated`` (present more than
        once), ``step_not_succeeded`` (acknowledged, but the step says otherwise).
    """
    lines: dict[pathlib.Path, collections.Counter[str]] = {}
    for root in work.roots:
        path = root / FILE
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines[root] = collections.Counter(text.splitlines())
    out: collections.Counter[str] = collections.Counter()
    for rec in work.appends:
        if rec.step_id is not None:
            resp = http.get(f"/v1/steps/{rec.step_id}")
            rec.status = str(resp.json().get("status")) if resp.status_code == 200 else ""
        if not rec.acknowledged:
            continue
        seen = lines[rec.root][rec.line]
        if seen == 0:
            out["missing"] += 1
        elif seen > 1:
            out["repeated"] += 1
        if rec.status != "succeeded":
            out["step_not_succeeded"] += 1
    return out
