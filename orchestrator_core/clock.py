"""Injected time (STYLE: core code never calls time.time() directly)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock", "iso_utc"]


class Clock(Protocol):
    """Source of wall time (for timestamps) and monotonic time (for durations)."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring durations."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``."""
        self._wall += seconds
        self._mono += seconds


def iso_utc(ts: float) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, e.g. ``2026-11-21T11:40:08.123Z``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
