"""Does a hostile pattern hold the event loop? ``/health`` latency during ReDoS attempts.

Run as ``python -m tools.bench.redos [--json]`` (POLICY-3020, POLICY-3021). It starts the
server on the mock engine in a child process on a loopback port (the entry point of
:mod:`tools.bench.streams`), then, for each catastrophic-on-backtracking pattern and each
place a request can put one, sends the hostile request while a thread polls
``GET /health`` every few milliseconds over its own connection:

* ``tool``: a Flow whose tool's ``parameters`` constrain ``q`` with the pattern, then a
  ``tool_call`` whose ``q`` is the hostile string;
* ``fact``: a Flow whose fact schema constrains ``s``, then a Fact whose ``s`` is hostile;
* ``contract``: an ``llm_call`` whose ``response_contract`` constrains ``s`` with the
  pattern and an ``enum`` holding the hostile string, so the mock engine (which answers a
  schema with a seeded document) answers it; the stream is read to its end;
* ``redact``: a Run whose ``policy.redact`` holds the pattern, then an ``llm_call``
  whose prompt is the hostile string; the stream is read to its end.

The table gives the max and p99 ``/health`` latency while each case ran (from creating
its Flow to its answer or its stream's end) and the hostile request's own outcome. The
exit status is 1 when any case stalled ``/health`` for :data:`STALL_MS` or more. Every
request goes to 127.0.0.1; the case count is fixed and each request has a timeout.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgspec

from tools.bench.streams import ServerProcess

__all__ = ["PATTERNS", "PLACES", "STALL_MS", "Case", "hostile", "main", "run_case"]

STALL_MS = 50.0
"""A ``/health`` answer this slow (ms) counts as a stall."""
PATTERNS = ("^(a+)+$", "(a|aa)+$", "(a|a?)+$", "^(\\w+\\s?)*$", "(.*a){12}")
PLACES = ("tool", "fact", "contract", "redact")
_POLL_S = 0.005
_TIMEOUT_S = 60.0
_LENGTHS = {"tool": 200_000, "fact": 200_000, "contract": 20_000, "redact": 200_000}


class Case(msgspec.Struct):
    """One hostile request and the ``/health`` latencies (ms) seen while it ran."""

    place: str
    pattern: str
    length: int
    outcome: str
    health_n: int
    health_max_ms: float
    health_p99_ms: float
    wall_ms: float


def hostile(pattern: str, n: int) -> str:
    """The text that makes a backtracking engine explore every split: n ``a`` then a
    character that fails the match (for ``(.*a){12}``: 11 ``a`` then n ``b``)."""
    return "a" * 11 + "b" * n if pattern.startswith("(.*a)") else "a" * n + "!"


class _Poller:
    """Polls ``GET /health`` every :data:`_POLL_S` on its own connection, in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, float]] = []  # (start, latency ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=_TIMEOUT_S) as http:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                http.get("/health").raise_for_status()
                self.samples.append((t0, (time.perf_counter() - t0) * 1000))
                self._stop.wait(_POLL_S)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(_TIMEOUT_S)

    def between(self, t0: float, t1: float) -> list[float]:
        """Latencies (ms) of the polls that were in flight between ``t0`` and ``t1``."""
        return [ms for start, ms in list(self.samples) if start <= t1 and start + ms / 1000 >= t0]


def _read_stream(http: httpx.Client, step_id: str) -> str:
    """The last SSE event name of a Step's stream, read to its end."""
    last = "?"
    with http.stream("GET", f"/v1/steps/{step_id}/stream") as resp:
        for line in resp.iter_lines():
            if line.startswith("event:"):
                last = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and last == "error":
                last = "error " + json.loads(line.split(":", 1)[1])["code"]
    return last


def _status(resp: httpx.Response) -> str:
    body = resp.json()
    return f"{resp.status_code} {body['code']}" if resp.status_code >= 400 else \
        str(resp.status_code)


def _tool(http: httpx.Client, pattern: str, text: str, k: int) -> str:
    schema = {"type": "object", "properties": {"q": {"type": "string", "pattern": pattern}}}
    flow = http.post("/v1/flows", json={"ast_ir": {"redos": k}, "tools": [
        {"name": "grep", "executor": "wc", "parameters": schema}]})
    if flow.status_code >= 400:
        return "flow " + _status(flow)
    run = http.post(f"/v1/flows/{flow.json()['flow_id']}/runs", json={}).json()
    resp = http.post(f"/v1/runs/{run['run_id']}/steps", json={
        "type": "tool_call", "client_token": f"t-{k}",
        "input": {"tool": "grep", "args": {"q": text}}})
    return _status(resp)


def _fact(http: httpx.Client, pattern: str, text: str, k: int) -> str:
    schema = {"type": "object", "properties": {"s": {"type": "string", "pattern": pattern}}}
    flow = http.post("/v1/flows", json={"ast_ir": {"redos": k},
                                        "config": {"fact_schemas": {"urn:redos": schema}}})
    if flow.status_code >= 400:
        return "flow " + _status(flow)
    run = http.post(f"/v1/flows/{flow.json()['flow_id']}/runs", json={}).json()
    resp = http.post(f"/v1/runs/{run['run_id']}/facts", json={
        "type": "s", "schema_uri": "urn:redos", "data": {"s": text}})
    return _status(resp)


def _llm(http: httpx.Client, k: int, policy: dict[str, Any], prompt: str,
         contract: dict[str, Any] | None, max_tokens: int) -> str:
    flow = http.post("/v1/flows", json={"ast_ir": {"redos": k}}).json()
    run = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"policy": policy})
    if run.status_code >= 400:
        return "run " + _status(run)
    inp: dict[str, Any] = {"model": "mock:echo-1", "prompt": prompt,
                           "params": {"max_tokens": max_tokens}}
    if contract is not None:
        inp["response_contract"] = contract
    resp = http.post(f"/v1/runs/{run.json()['run_id']}/steps", json={
        "type": "llm_call", "client_token": f"l-{k}", "input": inp})
    if resp.status_code >= 400:
        return _status(resp)
    return f"{resp.status_code}, stream: {_read_stream(http, resp.json()['step_id'])}"


def _contract(http: httpx.Client, pattern: str, text: str, k: int) -> str:
    contract = {"type": "object", "required": ["s"], "properties": {
        "s": {"type": "string", "enum": [text], "pattern": pattern}}}
    return _llm(http, k, {}, "answer with the document", contract, len(text) // 4 + 64)


def _redact(http: httpx.Client, pattern: str, text: str, k: int) -> str:
    return _llm(http, k, {"redact": [pattern]}, text, None, 8)


_PLACE: dict[str, Callable[[httpx.Client, str, str, int], str]] = {
    "tool": _tool, "fact": _fact, "contract": _contract, "redact": _redact}


def run_case(http: httpx.Client, poller: _Poller, place: str, pattern: str,
             k: int) -> Case:
    """Send one hostile case and collect the ``/health`` latencies seen meanwhile."""
    text = hostile(pattern, _LENGTHS[place])
    time.sleep(0.05)  # let the poller sample the idle server first
    t0 = time.perf_counter()
    outcome = _PLACE[place](http, pattern, text, k)
    t1 = time.perf_counter()
    time.sleep(0.02)  # the polls in flight at t1 finish
    lat = poller.between(t0, t1)
    p99 = statistics.quantiles(lat, n=100)[98] if len(lat) >= 2 else max(lat, default=0.0)
    return Case(place=place, pattern=pattern, length=len(text), outcome=outcome,
                health_n=len(lat), health_max_ms=max(lat, default=0.0), health_p99_ms=p99,
                wall_ms=(t1 - t0) * 1000)


def render_text(cases: list[Case], idle: Case) -> str:
    """The table, one row per case, the idle baseline first."""
    lines = [f"{'place':9} {'pattern':14} {'chars':>7} {'polls':>5} {'max ms':>7} "
             f"{'p99 ms':>7} {'wall ms':>8}  request"]
    for c in (idle, *cases):
        lines.append(f"{c.place:9} {c.pattern:14} {c.length:>7} {c.health_n:>5} "
                     f"{c.health_max_ms:>7.1f} {c.health_p99_ms:>7.1f} {c.wall_ms:>8.1f}  "
                     f"{c.outcome}")
    stalls = [c for c in cases if c.health_max_ms >= STALL_MS]
    lines.append(f"stalls >= {STALL_MS:.0f} ms: {len(stalls)} of {len(cases)} cases")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every case against a fresh server; print the table (or JSON).

    Returns:
        0, or 1 when any case held ``/health`` for :data:`STALL_MS` ms or more.
    """
    p = argparse.ArgumentParser(prog="python -m tools.bench.redos", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the cases as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="redos-") as tmp:
        server = ServerProcess(pathlib.Path(tmp), tokens_per_s=0.0, slots=4)
        server.start()
        try:
            with _Poller(server.url) as poller, \
                    httpx.Client(base_url=server.url, timeout=_TIMEOUT_S) as http:
                time.sleep(0.1)
                t0 = time.perf_counter()
                time.sleep(0.5)
                idle_lat = poller.between(t0, time.perf_counter())
                idle = Case(place="(idle)", pattern="-", length=0, outcome="-",
                            health_n=len(idle_lat), health_max_ms=max(idle_lat),
                            health_p99_ms=statistics.quantiles(idle_lat, n=100)[98],
                            wall_ms=500.0)
                cases = [run_case(http, poller, place, pattern, k)
                         for k, (pattern, place) in enumerate(
                             (pt, pl) for pt in PATTERNS for pl in PLACES)]
        finally:
            server.stop()
    if args.json:
        print(msgspec.json.encode({"idle": idle, "cases": cases}).decode())
    else:
        print(render_text(cases, idle))
    return 1 if any(c.health_max_ms >= STALL_MS for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
