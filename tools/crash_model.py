"""The crash loop's data: what it submitted, what its readers saw, the tally of the
figures that must stay 0, and its constants (:mod:`tools.crash_loop`)."""

from __future__ import annotations

import collections
import pathlib
import random
import sqlite3
import subprocess
from dataclasses import dataclass, field
from typing import Any

import httpx

from tools import crash_fs

__all__ = ["DB_NAME", "FIGURES", "Frame", "Loop", "Options", "Server", "StepRecord", "Tally"]

FIGURES = ("lost_events", "duplicated_tokens", "orphan_processes", "broken_idempotency",
           "counter_mismatches", "lost_appends", "leftover_temp_files")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
TERMINAL_EVENTS = frozenset({"end", "error"})
DB_NAME = "orchestrator.db"

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
"""Every control-plane HTTP call (seconds)."""
READER_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
"""Live stream readers: a queued step may send nothing but heartbeats for a while (s)."""
VERIFY_STREAM_S = 15.0
"""Longest time one full-log read may take during verification (seconds)."""
ORPHAN_GRACE_S = 5.0
"""How long killed-server children may take to die (seconds)."""
READER_JOIN_S = 10.0
"""How long to wait for a reader thread after the kill (seconds)."""
START_ATTEMPTS = 3
LOOP_ERRORS = (RuntimeError, OSError, httpx.HTTPError, sqlite3.Error, subprocess.TimeoutExpired)
"""Failures that end the loop with a report instead of a traceback."""
MOCK_TOKENS_PER_S = 300.0
PROMPTS = (
    "Write a long, detailed story about a dragon who learns to cook.",
    "Explain in great detail how a steam engine works, step by step.",
    "Describe a long journey across a desert, day by day, in detail.",
    "Write a detailed travel guide for a city that does not exist.",
)


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One durable SSE frame as a reader saw it: ``id`` (seq), ``event``, raw ``data``."""

    id: int
    event: str
    data: str


@dataclass
class StepRecord:
    """A step this tool submitted, and what its live reader received before the kill.

    Attributes:
        cycle: the cycle (1-based) in which it was submitted.
        run_id: its run.
        client_token: its idempotency key.
        body: the exact JSON body that was POSTed.
        step_id: the id the server gave it.
        received: durable frames the live reader received, in order.
        reader_error: why the live reader stopped early (``None`` when it saw a terminal).
        replay: a Step of a ``replay`` Run, served by reference to a recorded Step of the
            previous cycle (NERVE-4025).
        final_status: status seen at the latest verification.
        log_frames: frames in its log at the latest verification.
        attempts: the Step ids of its client_token, attempt 0 first: a Step a crash
            left ``interrupted`` is retried, when its body is submitted again, as a new
            attempt (NERVE-4105); verification does that and checks each attempt.
    """

    cycle: int
    run_id: str
    client_token: str
    body: dict[str, Any]
    step_id: str
    received: list[Frame] = field(default_factory=list)
    reader_error: str | None = None
    final_status: str = ""
    log_frames: int = 0
    replay: bool = False
    attempts: list[str] = field(default_factory=list)


@dataclass
class Tally:
    """Failure counts by ``figure.detail``; a figure is the sum of its details."""

    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, figure: str, detail: str, n: int = 1, example: str = "") -> None:
        """Count ``n`` failures of kind ``figure.detail`` (``n <= 0`` is ignored).

        Args:
            figure: one of :data:`FIGURES`.
            detail: what exactly failed.
            n: how many (frames, tokens, processes or steps).
            example: a human-readable instance; 3 per kind and 20 in all are kept.
        """
        if n <= 0:
            return
        assert figure in FIGURES, figure
        key = f"{figure}.{detail}"
        shown = sum(1 for e in self.examples if e.startswith(key + ":"))
        self.counts[key] += n
        if example and len(self.examples) < 20 and shown < 3:
            self.examples.append(f"{key}: {example}")

    def figures(self) -> dict[str, int]:
        """The headline figures (all must be 0)."""
        return {f: sum(v for k, v in self.counts.items() if k.startswith(f + "."))
                for f in FIGURES}


@dataclass(frozen=True)
class Options:
    """Command-line options.

    Attributes:
        cycles: kill/restart cycles.
        streams: concurrent streaming steps per cycle.
        seed: random seed (kill timing, step parameters).
        mock: mock engine instead of llama.cpp.
        data_dir: the shared data directory (``None``: a new temporary directory, kept
            for inspection).
        as_json: print the report as JSON.
        time_limit_s: the loop starts no new cycle after this many seconds.
        max_delay_s: upper bound of the kill moment after submission (seconds).
        fs_appends: ``fs_op`` appends per Run (parent and fork) per cycle.
    """

    cycles: int
    streams: int
    seed: int
    mock: bool
    data_dir: pathlib.Path | None
    as_json: bool
    time_limit_s: float
    max_delay_s: float
    fs_appends: int = 30


@dataclass
class Server:
    """A running server process and its base URL."""

    proc: subprocess.Popen[bytes]
    url: str


@dataclass
class Loop:
    """Mutable state of one crash loop."""

    opts: Options
    rng: random.Random
    data_dir: pathlib.Path
    config_path: pathlib.Path
    model: str
    tally: Tally = field(default_factory=Tally)
    steps: list[StepRecord] = field(default_factory=list)
    cycle_log: list[dict[str, Any]] = field(default_factory=list)
    verifications: int = 0
    frames_checked: int = 0
    fs: crash_fs.FsWorkload = field(default_factory=crash_fs.FsWorkload)

