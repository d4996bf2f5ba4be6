"""The crash loop's checks after each restart: every Step's log against what its live
reader received, its idempotency key (attempts included, NERVE-4105), the store's
integrity and its counters (:mod:`tools.crash_loop`)."""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import httpx

from orchestrator_core.store import SqliteStore
from test_harness.support import parse_sse
from tools import crash_fs
from tools.crash_model import (
    DB_NAME,
    HTTP_TIMEOUT,
    READER_TIMEOUT,
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    VERIFY_STREAM_S,
    Frame,
    Loop,
    Server,
    StepRecord,
)

__all__ = ["check_integrity", "check_temp_files", "integrity", "read_frames", "reader",
           "verify_all"]

def integrity(db: pathlib.Path) -> dict[str, int]:
    """:meth:`SqliteStore.integrity` of a copy of ``db`` (and its WAL).

    A copy, so that opening and closing the store (which checkpoints) does not change
    the crash state the next server start recovers from.
    """
    with tempfile.TemporaryDirectory(prefix="crash-loop-db-") as tmp:
        for suffix in ("", "-wal"):
            src = db.with_name(db.name + suffix)
            if src.exists():
                shutil.copyfile(src, pathlib.Path(tmp) / (DB_NAME + suffix))
        store = SqliteStore(pathlib.Path(tmp) / DB_NAME)
        try:
            return store.integrity()
        finally:
            store.close()


def check_temp_files(loop: Loop, where: str) -> None:
    """Count the broker's temporary files left under the sandbox parent (after recovery
    or a clean stop every one must be gone)."""
    found = crash_fs.count_temp_files(loop.data_dir / "sandboxes")
    loop.tally.add("leftover_temp_files", "present", len(found), f"{where}: {found[:3]}")


def check_integrity(loop: Loop, where: str) -> None:
    """Count non-zero integrity figures: gaps/stale cursors and broken references (a Step
    served by reference whose recording is missing, unfinished or hashed otherwise,
    NERVE-4025) as lost, two terminals as duplicated, usage counters off their recount as
    counter mismatches."""
    result = integrity(loop.data_dir / DB_NAME)
    ex = f"{where}: {result}"
    loop.tally.add("lost_events", "integrity_seq_gaps", result["seq_gaps"], ex)
    loop.tally.add("lost_events", "integrity_stale_last_seq", result["stale_last_seq"], ex)
    loop.tally.add("lost_events", "integrity_broken_references",
                   result.get("broken_references", 0), ex)
    loop.tally.add("duplicated_tokens", "integrity_multi_terminal",
                   result["multi_terminal"], ex)
    loop.tally.add("counter_mismatches", "integrity_usage_mismatch",
                   result["usage_mismatch"], ex)


# -- submitting and reading ------------------------------------------------------------


def durable_frames(raw: bytes) -> list[Frame]:
    """The durable frames (those with an ``id``) of complete SSE blocks in ``raw``."""
    return [Frame(int(f["id"]), str(f.get("event", "")), str(f.get("data", "")))
            for f in parse_sse(raw) if f["id"] is not None]


def read_frames(http: httpx.Client, step_id: str, sink: list[Frame],
                deadline: float, resubmit: StepRecord | None = None) -> str | None:
    """Read a step's SSE stream from the start, appending each complete durable frame.

    Args:
        http: client (its timeouts bound each read).
        step_id: the step.
        sink: receives frames as soon as their block is complete.
        deadline: ``time.monotonic()`` value after which reading stops.
        resubmit: read the stream answer of re-POSTing this step's body with
            ``Accept: text/event-stream`` (200, STREAM-2010) instead of ``GET .../stream``.

    Returns:
        ``None`` when a terminal frame was read, else why reading stopped.
    """
    buf = b""
    request = (http.build_request("POST", f"/v1/runs/{resubmit.run_id}/steps",
                                  json=resubmit.body,
                                  headers={"Accept": "text/event-stream"})
               if resubmit is not None
               else http.build_request("GET", f"/v1/steps/{step_id}/stream"))
    try:
        with contextlib.closing(http.send(request, stream=True)) as resp:
            if resp.status_code != 200:
                return f"HTTP {resp.status_code}"
            if resp.headers.get("x-step-id", step_id) != step_id:
                return f"X-Step-Id {resp.headers['x-step-id']} is not {step_id}"
            for chunk in resp.iter_bytes():
                buf += chunk
                head, sep, buf = buf.rpartition(b"\n\n")
                if sep:
                    sink.extend(durable_frames(head + sep))
                if sink and sink[-1].event in TERMINAL_EVENTS:
                    return None
                if time.monotonic() > deadline:
                    return "deadline"
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return "stream ended without a terminal frame"


def reader(url: str, rec: StepRecord, deadline: float, resubmit: bool = False) -> None:
    """Thread body: read ``rec``'s live stream into ``rec.received`` until it breaks;
    with ``resubmit``, through the stream answer of re-POSTing its body (STREAM-2010)."""
    with httpx.Client(base_url=url, timeout=READER_TIMEOUT) as http:
        rec.reader_error = read_frames(http, rec.step_id, rec.received, deadline,
                                       rec if resubmit else None)


# -- verification ----------------------------------------------------------------------


def sequence_errors(values: Sequence[int]) -> int:
    """How far ``values`` is from exactly ``0..n-1`` in order: the larger of repeated
    values and expected values that are absent (at least 1 when only the order is wrong).
    """
    if list(values) == list(range(len(values))):
        return 0
    seen = set(values)
    repeats = len(values) - len(seen)
    absent = len(set(range(len(values))) - seen)
    return max(1, repeats, absent)


def check_received(loop: Loop, rec: StepRecord, log: list[Frame]) -> None:
    """Every frame the live reader received must be in the log with the same data."""
    by_id = {f.id: f for f in log}
    missing = [f.id for f in rec.received if f.id not in by_id]
    differs = [f.id for f in rec.received if f.id in by_id and by_id[f.id] != f]
    where = f"step {rec.step_id} ({rec.client_token})"
    loop.tally.add("lost_events", "received_frame_missing", len(missing),
                   f"{where}: ids {missing[:5]} received but not in the log")
    loop.tally.add("lost_events", "received_frame_differs", len(differs),
                   f"{where}: ids {differs[:5]} differ from the log")
    loop.tally.add("duplicated_tokens", "reader_id_sequence",
                   sequence_errors([f.id for f in rec.received]),
                   f"{where}: reader ids {[f.id for f in rec.received][:12]}")
    loop.frames_checked += len(rec.received)


def token_indices(log: list[Frame]) -> list[int]:
    """The ``i`` of every token frame of a log, in order (-1 for an undecodable one)."""
    out = []
    for f in log:
        if f.event == "token":
            try:
                out.append(int(json.loads(f.data)["i"]))
            except (ValueError, KeyError, TypeError):
                out.append(-1)
    return out


def check_log(loop: Loop, rec: StepRecord, log: list[Frame], step: dict[str, Any]) -> None:
    """Ids ``0..m``, token indices ``0..n-1``, one terminal frame, last; cursor and
    ``tokens_out`` agree with the log."""
    where = f"step {rec.step_id} ({rec.client_token}, {step.get('status')})"
    ids = [f.id for f in log]
    tokens = token_indices(log)
    terminals = [f.id for f in log if f.event in TERMINAL_EVENTS]
    tally = loop.tally
    tally.add("duplicated_tokens", "log_id_sequence", sequence_errors(ids),
              f"{where}: ids {ids[:12]}...")
    tally.add("duplicated_tokens", "token_index_sequence", sequence_errors(tokens),
              f"{where}: token i {tokens[:12]}...")
    tally.add("duplicated_tokens", "multiple_terminal_frames", len(terminals) - 1,
              f"{where}: terminal frames at ids {terminals}")
    if step.get("status") in TERMINAL_STATUSES:
        tally.add("lost_events", "terminal_frame_missing",
                  int(not log or log[-1].event not in TERMINAL_EVENTS),
                  f"{where}: log ends with {log[-1] if log else 'nothing'}")
        tally.add("lost_events", "last_seq_mismatch",
                  int(step.get("last_seq") != (ids[-1] if ids else -1)),
                  f"{where}: last_seq {step.get('last_seq')} vs log {ids[-1:]}")
    if step.get("status") in ("succeeded", "interrupted"):
        out = int(step.get("usage", {}).get("tokens_out", -1))
        tally.add("duplicated_tokens", "tokens_out_mismatch", int(out != len(tokens)),
                  f"{where}: tokens_out {out} vs {len(tokens)} token frames")


def _post(loop: Loop, http: httpx.Client, rec: StepRecord) -> httpx.Response | None:
    try:
        return http.post(f"/v1/runs/{rec.run_id}/steps", json=rec.body)
    except httpx.HTTPError as exc:
        loop.tally.add("broken_idempotency", "resubmit_failed", 1,
                       f"{rec.client_token}: {type(exc).__name__}")
        return None


def check_resubmit(loop: Loop, http: httpx.Client, rec: StepRecord) -> None:
    """Re-POSTing the original body answers 200 with the token's latest attempt; when
    that attempt is ``interrupted`` (a crash ended it), it makes the next attempt once:
    201, ``attempt`` one more, ``retry_of`` the first attempt, and a second re-POST
    answers 200 with that same new Step (NERVE-4003, NERVE-4105)."""
    attempts = rec.attempts or [rec.step_id]
    latest = http.get(f"/v1/steps/{attempts[-1]}")
    retry = latest.status_code == 200 and latest.json().get("status") == "interrupted"
    resp = _post(loop, http, rec)
    if resp is None:
        return
    got = resp.json() if resp.status_code in (200, 201) else {}
    if not retry:
        loop.tally.add("broken_idempotency", "resubmit_mismatch",
                       int(resp.status_code != 200 or got.get("step_id") != attempts[-1]),
                       f"{rec.client_token}: HTTP {resp.status_code}, step_id "
                       f"{got.get('step_id')} (expected 200, {attempts[-1]}); "
                       f"{resp.text[:200]}")
        rec.attempts = attempts
        return
    again = _post(loop, http, rec)
    second = again.json().get("step_id") if again is not None and again.status_code == 200 \
        else None
    loop.tally.add("broken_idempotency", "retry_mismatch",
                   int((resp.status_code, got.get("attempt"), got.get("retry_of"), second)
                       != (201, len(attempts), rec.step_id, got.get("step_id"))),
                   f"{rec.client_token}: HTTP {resp.status_code}, attempt "
                   f"{got.get('attempt')}, retry_of {got.get('retry_of')}, then "
                   f"{second} (expected 201, attempt {len(attempts)}, retry_of "
                   f"{rec.step_id}, then the same Step); {resp.text[:200]}")
    rec.attempts = [*attempts, str(got.get("step_id"))]


def verify_step(loop: Loop, http: httpx.Client, rec: StepRecord) -> None:
    """All checks of one step against the restarted server."""
    resp = http.get(f"/v1/steps/{rec.step_id}")
    if resp.status_code != 200:
        loop.tally.add("lost_events", "step_row_missing", 1,
                       f"{rec.step_id}: HTTP {resp.status_code}")
        return
    step: dict[str, Any] = resp.json()
    rec.final_status = str(step.get("status"))
    loop.tally.add("broken_idempotency", "not_terminal_after_recovery",
                   int(rec.final_status not in TERMINAL_STATUSES),
                   f"{rec.step_id} ({rec.client_token}) is {rec.final_status}")
    log: list[Frame] = []
    why = read_frames(http, rec.step_id, log, time.monotonic() + VERIFY_STREAM_S)
    if why is not None and rec.final_status in TERMINAL_STATUSES:
        loop.tally.add("lost_events", "log_unreadable", 1, f"{rec.step_id}: {why}")
    rec.log_frames = len(log)
    check_received(loop, rec, log)
    check_log(loop, rec, log, step)
    check_resubmit(loop, http, rec)


def check_db_tokens(loop: Loop) -> None:
    """Read-only SQL: no ``(run_id, client_token, attempt)`` maps to two steps, and each
    of our tokens maps to exactly its attempts, in order."""
    uri = (loop.data_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=10.0)
    try:
        dup = con.execute("SELECT COUNT(*) FROM (SELECT 1 FROM steps GROUP BY run_id,"
                          " client_token, attempt HAVING COUNT(*) > 1)").fetchone()[0]
        loop.tally.add("broken_idempotency", "db_token_maps_to_two_steps", int(dup),
                       f"{dup} (run_id, client_token, attempt) keys with several step rows")
        for rec in loop.steps:
            want = rec.attempts or [rec.step_id]
            rows = [r[0] for r in con.execute(
                "SELECT step_id FROM steps WHERE run_id = ? AND client_token = ?"
                " ORDER BY attempt", (rec.run_id, rec.client_token))]
            loop.tally.add("broken_idempotency", "db_token_row_mismatch",
                           int(rows != want),
                           f"{rec.client_token}: rows {rows}, expected {want}")
    finally:
        con.close()


def verify_all(loop: Loop, server: Server) -> None:
    """Verify every step submitted so far (run after each restart)."""
    loop.verifications += 1
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as http:
        for rec in loop.steps:
            verify_step(loop, http, rec)
    check_db_tokens(loop)

