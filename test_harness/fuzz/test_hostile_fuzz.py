"""Fuzz a real server with hostile request bodies, headers and query parameters.

A mock-engine ``orchestratord serve`` process (Granian, loopback) is seeded with a Flow
declaring tools and a fact schema, a record Run with a file-system sandbox (its root
derived from ``GET /v1/capabilities`` ``sandbox_parents``; without one, no case touches
``fs_op``), a Run for gates, a finished Step and a Fact. The generators of
:mod:`test_harness.fuzz.hostile` then spoil valid bodies aimed at those ids, category by
category (wrong Content-Type, invalid UTF-8, deep nesting, huge numbers, deep and
recursive JSON Schemas, JMESPath bombs, catastrophic regular expressions), and every
request is sent raw with httpx. The test fails on:

* any status 500, and any error answer that is not the envelope ``{code, message,
  retriable, retry_after_ms?, data?}``;
* a status other than the one the edge must give (SEC-6001, SEC-6002: 415 for a wrong
  Content-Type, 400 for invalid UTF-8, nesting past 64 levels, integers outside int64 and
  numbers outside the float range, and a bad ``Last-Event-ID``);
* any request slower than 1 s (SSE routes answer a bad ``Last-Event-ID`` before streaming;
  a stream that does start is read for 0.5 s and counted apart, not as slow);
* no answer (dropped connection, or no answer within 5 s: the server is then killed and
  restarted; after two stalls in one family of cases (a category's cases on one
  operation with one use of the input, such as ``policy.redact``) the rest of that family
  is skipped and counted);
* a Step accepted by the server that then fails with ``INTERNAL``, or that is still
  running 3 s later (Steps are followed until they end, so background work is timed);
* a traceback in the server log;
* a ``GET /health`` poll (every 10 ms, in a thread, for the whole run) slower than 250 ms.

``FUZZ_CASES`` (default 200) is the total number of cases, spread over the categories;
what a category cannot use (its distinct cases run out) goes to the ones after it.
``FUZZ_CATEGORIES`` (comma-separated, default all) picks categories.
Generation is derandomized and keeps no example database.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import given, settings

from test_harness.fuzz.bodies import FRESH_TOKEN, FS_ALLOW, SEED_FLOW, Targets
from test_harness.fuzz.common import (
    FUZZ_CASES,
    FUZZ_SETTINGS,
    TRACEBACK,
    envelope_problem,
    exception_line,
    log_since,
    shown,
    stray_tracebacks,
)
from test_harness.fuzz.hostile import (
    CATEGORIES,
    NEST_SHAPES,
    HostileCase,
    Req,
    hostile_cases,
    nest,
)
from test_harness.fuzz.live import HealthProbe, LiveServer, Poll
from test_harness.support import http_run_step, llm_step

REQUEST_TIMEOUT_S = 5.0
"""No answer within this long is a stall."""
SLOW_S = 1.0
"""The acceptance bound on a single request."""
HEALTH_LIMIT_S = 0.25
"""The acceptance bound on a ``/health`` poll during the run."""
STREAM_READ_S = 0.5
"""How long a stream that unexpectedly started is read."""
FOLLOW_S = 3.0
"""How long an accepted Step may run before the fuzz cancels it and reports it."""
MAX_STALLS = 2
"""Stalls per family of cases (category, operation, family) before the rest are skipped."""
_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_CHOSEN = tuple(c for c in os.environ.get("FUZZ_CATEGORIES", ",".join(CATEGORIES)).split(",")
                if c)
assert set(_CHOSEN) <= set(CATEGORIES), f"FUZZ_CATEGORIES: choose among {CATEGORIES}"


@dataclass
class Report:
    """What the hostile fuzz saw, per category."""

    cases: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    steps: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    max_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    streamed: Counter[str] = field(default_factory=Counter)
    stream_notes: Counter[str] = field(default_factory=Counter)
    stalls: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    attributed: list[tuple[int, int]] = field(default_factory=list)

    def fail(self, kind: str, case: HostileCase, key: str, detail: str) -> None:
        """Record a failure; same kind, category and key are grouped."""
        self.failures.setdefault((f"{kind} [{case.category}]", key), []).append(
            f"case: {case.operation}: {case.note}\n{detail}")

    def render(self) -> str:
        """One block per distinct failure: its count, the distinct cases that hit it (up to
        12) and the first example in full."""
        blocks = []
        for (what, key), details in sorted(self.failures.items()):
            notes = sorted({d.partition("\n")[0].removeprefix("case: ") for d in details
                            if d.startswith("case: ")})
            listed = "".join(f"\n  - {n}" for n in notes[:12]) + \
                (f"\n  - … {len(notes) - 12} more" if len(notes) > 12 else "")
            cases = f"distinct cases ({len(notes)}):{listed}\nfirst:\n" if len(notes) > 1 else ""
            blocks.append(f"=== {what} {key} x{len(details)}\n{cases}{details[0]}")
        return "\n\n".join(blocks)


def _seed(url: str) -> Targets:
    """The Flow, Runs, Step and Fact every hostile case aims at."""
    with httpx.Client(base_url=url, timeout=30.0) as http:
        caps = http.get("/v1/capabilities").json()
        model = caps["models"][0]["id"]
        flow = http.post("/v1/flows", json=SEED_FLOW)
        assert flow.status_code == 201, flow.text
        flow_id = flow.json()["flow_id"]
        runs = f"/v1/flows/{flow_id}/runs"
        run_id = fs_root = None
        for parent in caps.get("sandbox_parents", []):
            root = os.path.join(parent, "fuzz-hostile")
            run = http.post(runs, json={"seed": 7, "fs_policy": {"roots": [root],
                                                                 "allow": FS_ALLOW}})
            if run.status_code == 201:
                run_id, fs_root = run.json()["run_id"], root
                break
            print(f"\nsandbox root {root} refused: {run.status_code} {run.text[:300]}")
        if run_id is None:
            print("\nno sandbox root could be made: fs_op cases are left out")
            run_id = http.post(runs, json={"seed": 7}).json()["run_id"]
        else:
            mkdir = {"type": "fs_op", "client_token": "seed-mkdir",
                     "input": {"op": "mkdir", "path": "out"}}
            _, frames = http_run_step(http, run_id, mkdir)
            assert frames and frames[-1]["event"] == "end", frames
        step, frames = http_run_step(http, run_id, llm_step("seed-llm", model=model))
        assert frames and frames[-1]["event"] == "end", step.text
        fact = http.post(f"/v1/runs/{run_id}/facts", json={
            "type": "score", "schema_uri": "urn:fuzz:score", "data": {"score": 0.9}})
        assert fact.status_code == 201, fact.text
        gate_run = http.post(runs, json={"seed": 8})
        assert gate_run.status_code == 201, gate_run.text
    return Targets(flow_id=flow_id, run_id=run_id, gate_run_id=gate_run.json()["run_id"],
                   step_id=step.json()["step_id"], model=model, fs_root=fs_root)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Targets]]:
    """A restartable mock-engine server on loopback, seeded."""
    server = LiveServer(tmp_path_factory.mktemp("hostile-fuzz"))
    try:
        yield server, _seed(server.url)
    finally:
        server.stop()


class Fuzzer:
    """Sends hostile cases and judges every answer into a :class:`Report`."""

    def __init__(self, server: LiveServer, probe: HealthProbe, report: Report) -> None:
        self.server, self.probe, self.report = server, probe, report
        self.http = httpx.Client(timeout=REQUEST_TIMEOUT_S)
        self.tokens = itertools.count()
        self.offset = 0
        """Server-log size when the case in flight started."""

    def run(self, case: HostileCase) -> None:
        """Send the case's requests in order, following each Step it creates."""
        if self.report.stalls[case.category, case.operation, case.family] >= MAX_STALLS:
            self.report.skipped[case.category] += 1
            return
        self.report.cases[case.category] += 1
        self.probe.during = f"{case.category}: {case.operation}: {case.note}"
        self.offset = self.server.log.stat().st_size
        ids: dict[str, str] = {}
        for req in case.requests:
            path = req.path.format(**ids) if "{" in req.path else req.path
            body = req.body
            if body is not None:
                body = body.replace(FRESH_TOKEN.encode(), f"hostile-{next(self.tokens)}".encode())
            answer = self._send(case, req, path, body)
            if answer is None:
                return
            status, doc = answer
            if req.capture is not None:
                if status not in (200, 201) or not isinstance(doc, dict):
                    return  # refused where it was declared: the case ends there
                ids[req.capture] = doc[req.capture]
            if status == 201 and path.endswith("/steps") and isinstance(doc, dict):
                self._follow(case, doc["step_id"])
        self._check_log(case)

    def _send(self, case: HostileCase, req: Req, path: str,
              body: bytes | None) -> tuple[int, Any] | None:
        """One request, timed; ``(status, JSON body or None)``, or None without an answer."""
        report, cat = self.report, case.category
        report.requests[cat] += 1
        sent = f"{req.method} {path}\nheaders: {list(req.headers)}\nbody: {shown(body)}"
        t0 = time.perf_counter()
        try:
            if req.stream:
                with self.http.stream(req.method, f"{self.server.url}{path}",
                                      headers=[(k.encode(), v) for k, v in req.headers]) as resp:
                    elapsed = time.perf_counter() - t0
                    if resp.status_code == 200:
                        report.streamed[cat] += 1
                        report.stream_notes[f"{req.label}: {case.note}"] += 1
                        self._drain(resp)
                        return 200, None
                    resp.read()
            else:
                resp = self.http.request(req.method, f"{self.server.url}{path}", content=body,
                                         headers=[(k.encode(), v) for k, v in req.headers])
                elapsed = time.perf_counter() - t0
        except httpx.HTTPError as exc:
            self._no_answer(case, req, sent, exc, time.perf_counter() - t0)
            return None
        report.statuses[cat][resp.status_code] += 1
        report.max_s[cat] = max(report.max_s[cat], elapsed)
        answered = f"{sent}\nstatus: {resp.status_code} in {elapsed * 1000:.0f} ms\n" \
                   f"response: {shown(resp.content)}"
        if elapsed > SLOW_S:
            report.fail("SLOW", case, req.label, answered)
        if resp.status_code == 500:
            report.fail("500", case, req.label, f"{answered}\n{self._log_lines()}")
        if resp.status_code >= 300:
            problem = envelope_problem(resp.status_code, resp.headers.get("content-type", ""),
                                       resp.content)
            if problem is not None:
                report.fail("NOT AN ENVELOPE", case, problem, answered)
        if req.expect and resp.status_code not in req.expect:
            report.fail("UNEXPECTED STATUS", case,
                        f"{req.label}: {resp.status_code}, not {sorted(req.expect)}", answered)
        try:
            return resp.status_code, resp.json()
        except ValueError:
            return resp.status_code, None

    def _drain(self, resp: httpx.Response) -> None:
        """Read a stream that should not have started for :data:`STREAM_READ_S`."""
        deadline = time.perf_counter() + STREAM_READ_S
        try:
            for _ in resp.iter_raw(1024):
                if time.perf_counter() > deadline:
                    break
        except httpx.ReadTimeout:
            pass

    def _no_answer(self, case: HostileCase, req: Req, sent: str, exc: Exception,
                   elapsed: float) -> None:
        """Report a request without an answer; restart the server if it is stuck."""
        report = self.report
        alive = self.server.alive(timeout_s=1.0)
        kind = "NO RESPONSE" if alive else \
            "STALL" if isinstance(exc, httpx.TimeoutException) else "SERVER DOWN"
        report.fail(kind, case, f"{req.label}: {type(exc).__name__}",
                    f"{sent}\nerror after {elapsed:.1f} s: {exc!r}\nserver answers /health: "
                    f"{alive}\n{self._log_lines()}")
        if not alive:
            report.stalls[case.category, case.operation, case.family] += 1
            self.probe.paused = True
            self.server.restart()
            self.probe.paused = False

    def _follow(self, case: HostileCase, step_id: str) -> None:
        """Poll an accepted Step until it ends (each poll timed like any request)."""
        req = Req("GET /v1/steps/{step_id} (follow-up)", "GET", f"/v1/steps/{step_id}",
                  headers=())
        deadline = time.monotonic() + FOLLOW_S
        while True:
            answer = self._send(case, req, req.path, None)
            if answer is None:
                return
            status, doc = answer
            if status != 200 or not isinstance(doc, dict):
                return
            if doc.get("status") in _TERMINAL:
                code = (doc.get("error") or {}).get("code")
                self.report.steps[case.category][f"{doc['status']}:{code}" if code
                                                  else doc["status"]] += 1
                if code == "INTERNAL":
                    self.report.fail("STEP FAILED WITH INTERNAL", case, doc["type"],
                                     f"step: {shown(json.dumps(doc))}\n{self._log_lines()}")
                return
            if time.monotonic() > deadline:
                self.report.steps[case.category]["still running: cancelled"] += 1
                self.report.fail("STEP STILL RUNNING", case, doc["type"],
                                 f"after {FOLLOW_S} s: {shown(json.dumps(doc))}")
                cancel = Req("POST /v1/steps/{step_id}/cancel", "POST",
                             f"/v1/steps/{step_id}/cancel", headers=())
                self._send(case, cancel, cancel.path, None)
                return
            time.sleep(0.02)

    def _log_tail(self) -> bytes:
        """The server log written since the case in flight started."""
        with self.server.log.open("rb") as f:
            f.seek(self.offset)
            return f.read()

    def _log_lines(self) -> str:
        """The server-log lines of the case in flight, once a traceback is among them (at
        most 1 s later); they count as shown."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and TRACEBACK.encode() not in self._log_tail():
            time.sleep(0.05)
        tail = self._log_tail()
        self.report.attributed.append((self.offset, self.offset + len(tail)))
        return "server log:\n" + _clip(tail.decode(errors="replace").strip() or "<none>")

    def _check_log(self, case: HostileCase) -> None:
        """Report the tracebacks the case left in the server log that no failure showed."""
        tail, marker = self._log_tail(), TRACEBACK.encode()
        at = tail.find(marker)
        while at >= 0:
            end = tail.find(marker, at + 1)
            if not any(lo <= self.offset + at < hi for lo, hi in self.report.attributed):
                block = tail[at:end if end >= 0 else len(tail)].decode(errors="replace")
                self.report.fail("SERVER TRACEBACK", case, exception_line(block), _clip(block))
            at = end
        self.report.attributed.append((self.offset, self.offset + len(tail)))


def _clip(text: str, head: int = 1500, tail: int = 2500) -> str:
    """A long log excerpt as its start and its end (where the exception is)."""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[… {len(text) - head - tail} characters …]\n{text[-tail:]}"


def _slow_polls(probe: HealthProbe) -> list[Poll]:
    return sorted((p for p in probe.polls if p.latency_s > HEALTH_LIMIT_S or not p.ok),
                  key=lambda p: -p.latency_s)


def _print_summary(report: Report, probe: HealthProbe, server: LiveServer) -> None:
    """Per category: cases, skipped, requests, statuses, slowest request, streams that
    started, slowest /health poll while its cases ran, failures; then /health overall."""
    health: dict[str, float] = defaultdict(float)
    for poll in probe.polls:
        cat = poll.during.split(":", 1)[0]
        health[cat] = max(health[cat], poll.latency_s)
    problems: Counter[str] = Counter()
    for (what, _key), details in report.failures.items():
        problems[what.partition("[")[2].rstrip("]")] += len(details)
    print(f"\nhostile fuzz: {sum(report.cases.values())} cases, "
          f"{sum(report.requests.values())} requests, {server.restarts} server restarts")
    print(f"  {'category':22s} {'cases':>5s} {'skip':>4s} {'reqs':>5s} {'max ms':>7s} "
          f"{'health':>6s} {'stream':>6s} {'fails':>5s}  statuses / step outcomes")
    for cat in _CHOSEN:
        statuses = dict(sorted(report.statuses[cat].items()))
        print(f"  {cat:22s} {report.cases[cat]:5d} {report.skipped[cat]:4d} "
              f"{report.requests[cat]:5d} {report.max_s[cat] * 1000:7.0f} "
              f"{health[cat] * 1000:6.0f} {report.streamed[cat]:6d} {problems[cat]:5d}  "
              f"{statuses}")
        if report.steps[cat]:
            print(f"  {'':63s}steps {dict(sorted(report.steps[cat].items()))}")
    for note, count in sorted(report.stream_notes.items()):
        print(f"  stream started (read {STREAM_READ_S} s, not a failure) x{count}: {note}")
    polls, worst, p99 = probe.summary()
    print(f"  /health: {polls} polls, max {worst * 1000:.0f} ms, p99 {p99 * 1000:.1f} ms, "
          f"{len(_slow_polls(probe))} over {HEALTH_LIMIT_S * 1000:.0f} ms or failed")


def _depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` outside strings (an unclosed run counts as open)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            escaped = not escaped and byte == 0x5C
            in_string = escaped or byte != 0x22
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


@pytest.mark.parametrize("shape", NEST_SHAPES)
def test_nest_builds_exactly_the_levels_asked(shape: str) -> None:
    """The deep-nesting generator makes as many levels as asked, odd or even, so cases
    "at the limit" and "one over" sit on either side of the server's 64."""
    assert [_depth(nest(n, shape)) for n in (1, 2, 3, 63, 64, 65, 20_000)] == \
        [1, 2, 3, 63, 64, 65, 20_000]


@pytest.mark.usefixtures("hypothesis_home")
def test_hostile_inputs_get_fast_typed_refusals(live: tuple[LiveServer, Targets]) -> None:
    """Over FUZZ_CASES hostile cases: no 500, envelopes only, no request over 1 s and no
    /health poll over 250 ms."""
    server, targets = live
    strategies = hostile_cases(targets)
    report = Report()
    probe = HealthProbe(server)
    fuzzer = Fuzzer(server, probe, report)
    probe.start()
    try:
        for index, cat in enumerate(_CHOSEN):
            left = FUZZ_CASES - sum(report.cases.values()) - sum(report.skipped.values())
            budget = max(1, left // (len(_CHOSEN) - index))

            @settings(FUZZ_SETTINGS, max_examples=budget)
            @given(case=strategies[cat])
            def fuzz(case: HostileCase) -> None:
                fuzzer.run(case)

            fuzz()
    finally:
        probe.stop()
        fuzzer.http.close()
    _print_summary(report, probe, server)
    if over := _slow_polls(probe):
        polls, worst, p99 = probe.summary()
        by_cat = Counter(p.during.split(":", 1)[0] for p in over)
        report.failures["SLOW /health", f"> {HEALTH_LIMIT_S * 1000:.0f} ms"] = [
            f"{len(over)} of {polls} polls (max {worst * 1000:.0f} ms, p99 {p99 * 1000:.1f} "
            f"ms); by category: {dict(sorted(by_cat.items()))}; the worst:\n" + "\n".join(
                f"  {p.latency_s * 1000:.0f} ms{'' if p.ok else ' (no answer)'} during "
                f"{shown(p.during, 200)}" for p in over[:8])]
    for block in stray_tracebacks(server.log, report.attributed):
        report.failures.setdefault(("SERVER TRACEBACK [between cases]", exception_line(block)),
                                   []).append(_clip(block))
    if server.proc.poll() is not None:
        report.failures["SERVER EXITED", str(server.proc.returncode)] = [
            log_since(server.log, 0)[-4000:]]
    if report.failures:
        pytest.fail(f"hostile fuzzing found {len(report.failures)} distinct problems:\n\n"
                    f"{report.render()}", pytrace=False)

