"""Injected time (STYLE: core code never calls time.time() directly).

Every duration of the domain runs on the injected :class:`Clock`: Step and Run wall-clock
deadlines, the disconnect grace before a Step is cancelled, the ``gate_eval`` wait, the facts
stream heartbeat and the circuit breakers' reset timeouts. Tests inject a :class:`FakeClock`
and move time with :meth:`FakeClock.advance` instead of sleeping (as trio's ``MockClock``
does). I/O plumbing stays on real time: the event log's commit interval (``eventlog.py``),
the pool health watcher (``pools.py``) and the step stream's keep-alive timers
(``streams.py``, asyncio timers on the hot path).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock", "iso_utc"]


class Clock(Protocol):
    """Source of wall time (for timestamps), monotonic time (for durations) and waits."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds, for measuring durations."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (cancellable)."""
        ...

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope cancelled once ``seconds`` of this clock's time have passed.

        Like :func:`anyio.move_on_after`: the body is cancelled at the deadline, the
        exception is swallowed at the scope's exit and ``scope.cancelled_caught`` tells.
        """
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """:func:`anyio.sleep`."""
        await anyio.sleep(seconds)

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """:func:`anyio.move_on_after`."""
        return anyio.move_on_after(seconds)


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    :meth:`sleep` and :meth:`move_on_after` wake only when a test advances the clock to or
    past their wake time; nothing here waits in real time.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._seq = itertools.count()
        # (wake monotonic time, tie-break, event to set or scope to cancel)
        self._timers: list[tuple[float, int, anyio.Event | anyio.CancelScope]] = []

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    @property
    def pending(self) -> int:
        """Sleeps and deadlines still waiting for time to reach them."""
        return len(self._timers)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``; wake every sleep and cancel every
        :meth:`move_on_after` scope whose time has come.

        Raises:
            ValueError: ``seconds`` is negative (time does not go back).
        """
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds} s")
        self._wall += seconds
        self._mono += seconds
        while self._timers and self._timers[0][0] <= self._mono:
            _at, _n, timer = heapq.heappop(self._timers)
            if isinstance(timer, anyio.CancelScope):
                timer.cancel()
            else:
                timer.set()

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced by ``seconds`` (a checkpoint when
        ``seconds <= 0``); cancellable."""
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        entry = (self._mono + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._timers, entry)
        try:
            await entry[2].wait()
        finally:
            self._forget(entry)

    @contextlib.contextmanager
    def _deadline(self, seconds: float) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            if seconds <= 0:
                scope.cancel()
                yield scope
                return
            entry = (self._mono + seconds, next(self._seq), scope)
            heapq.heappush(self._timers, entry)
            try:
                yield scope
            finally:
                self._forget(entry)

    def move_on_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope cancelled when the clock is advanced by ``seconds`` (at once when
        ``seconds <= 0``), like :func:`anyio.move_on_after`."""
        return self._deadline(seconds)

    def _forget(self, entry: tuple[float, int, anyio.Event | anyio.CancelScope]) -> None:
        if entry in self._timers:
            self._timers.remove(entry)
            heapq.heapify(self._timers)


def iso_utc(ts: float) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, e.g. ``2026-11-21T11:40:08.123Z``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
