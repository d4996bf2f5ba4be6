"""Helpers shared by the fuzz suites: settings, the error-envelope check, server-log reading.

The suites fuzz a real ``orchestratord serve`` process on loopback and judge every answer
the same way: a 4xx/5xx is the flat error envelope ``{code, message, retriable,
retry_after_ms?, data?}``, and a traceback in the server log is a failure even when the
client saw a clean answer. This module holds those checks and the Hypothesis settings the
suites share, so that both report problems in the same words.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import msgspec
from hypothesis import HealthCheck, Phase, settings

from contracts.errors import ErrorEnvelope
from contracts.openai import OaiErrorBody

__all__ = ["FUZZ_CASES", "FUZZ_SETTINGS", "TRACEBACK", "envelope_problem", "exception_line",
           "log_since", "openai_error_problem", "settled_size", "shown", "stray_tracebacks"]

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "200"))
"""Total cases of each fuzz test (env ``FUZZ_CASES``)."""

TRACEBACK = "Traceback (most recent call last):"
"""The first line of every Python traceback the server logs."""

FUZZ_SETTINGS = settings(
    deadline=None,  # each example is a network round trip
    derandomize=True,  # the same cases on every run, in CI too
    database=None,  # no .hypothesis/ directory in the repository
    phases=[Phase.generate],  # failures are collected, never raised: nothing to shrink
    # The one timing-based health check (data generation time): a loaded CI runner must
    # not fail the test. The others are deterministic under derandomize and pass.
    suppress_health_check=[HealthCheck.too_slow],
)
"""Hypothesis settings of every fuzz test; each adds its own ``max_examples``."""

_ENVELOPE_KEYS = frozenset({"code", "message", "retriable", "retry_after_ms", "data"})
_SHOWN = 1500  # characters of a request or response body shown in a report
_LOG_WAIT_S = 3.0


def shown(raw: object, limit: int = _SHOWN) -> str:
    """``raw`` (bytes decoded with replacement, or ``str()``) cut to ``limit`` characters."""
    if raw is None:
        return "<none>"
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


def envelope_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why a non-2xx answer is not the error envelope, or None when it is.

    Args:
        status: the HTTP status.
        content_type: the response's ``Content-Type`` ('' when absent).
        body: the response body.
    """
    if status < 400:
        return f"status {status} is not an error status"
    if not content_type.startswith("application/json"):
        return f"content-type {content_type!r} is not application/json"
    try:
        doc = json.loads(body)
    except ValueError:
        return "body is not JSON"
    if not isinstance(doc, dict):
        return f"body is a JSON {type(doc).__name__}, not an object"
    if extra := sorted(set(doc) - _ENVELOPE_KEYS):
        return f"unexpected keys {extra}"
    if nulls := sorted(k for k in ("retry_after_ms", "data") if k in doc and doc[k] is None):
        return f"optional keys {nulls} are null instead of absent"
    try:
        env = msgspec.convert(doc, ErrorEnvelope, strict=True)
    except msgspec.ValidationError as exc:
        return f"not an error envelope: {exc}"
    if env.retry_after_ms is not None and env.retry_after_ms < 0:
        return "retry_after_ms is negative"
    return None


def openai_error_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why a non-2xx answer of the OpenAI facade is not OpenAI's error body
    ``{"error": {message, type, code, param}}`` (OAI-6005), or None when it is."""
    if status < 400:
        return f"status {status} is not an error status"
    if not content_type.startswith("application/json"):
        return f"content-type {content_type!r} is not application/json"
    try:
        msgspec.json.decode(body, type=OaiErrorBody, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return f"not an OpenAI error body: {exc}"
    return None


def log_since(log: pathlib.Path, offset: int) -> str:
    """The server log from byte ``offset`` on, decoded with replacement."""
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").strip() or "<no server log lines>"


def settled_size(log: pathlib.Path, offset: int) -> int:
    """The log size once the lines of a request just answered are written.

    The worker's log lines reach the file a little after its response, so wait until the
    log has grown past ``offset`` and stopped growing (at most 3 s).
    """
    deadline = time.monotonic() + _LOG_WAIT_S
    size = log.stat().st_size
    while time.monotonic() < deadline:
        time.sleep(0.05)
        new = log.stat().st_size
        if new == size and size > offset:
            break
        size = new
    return size


def exception_line(log_text: str) -> str:
    """``file:line in function: exception`` of the last traceback in ``log_text``."""
    _, marker, last = log_text.rpartition(TRACEBACK)
    if not marker:
        return "no traceback in the server log"
    where, exc = "?", "?"
    for line in last.splitlines()[1:]:
        text = line.strip()
        if text.startswith('File "'):
            path, _, rest = text[6:].partition('", line ')
            number, _, func = rest.partition(", in ")
            where = f"{pathlib.Path(path).name}:{number} in {func}"
        elif text and not line.startswith((" ", "\t")):
            exc = text[:200]
            break
    return f"{where}: {exc}"


def stray_tracebacks(log: pathlib.Path, attributed: list[tuple[int, int]]) -> list[str]:
    """Tracebacks in the server log outside the byte ranges ``attributed`` (already shown
    with the request that caused them), each as its text."""
    raw = log.read_bytes()
    marker = TRACEBACK.encode()
    starts = []
    at = raw.find(marker)
    while at >= 0:
        starts.append(at)
        at = raw.find(marker, at + 1)
    blocks = []
    for n, start in enumerate(starts):
        if any(lo <= start < hi for lo, hi in attributed):
            continue
        end = starts[n + 1] if n + 1 < len(starts) else len(raw)
        blocks.append(raw[start:end].decode(errors="replace").strip())
    return blocks
