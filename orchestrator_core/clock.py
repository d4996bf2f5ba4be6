"""Injected time (STYLE: core code never calls time.time() directly; NERVE-4060).

Every timer of the core and the server runs on the injected :class:`Clock`: Step and Run
wall-clock deadlines, the disconnect grace before a Step is cancelled, the ``gate_eval``
wait, the keep-alive heartbeats of Step and Fact streams (:meth:`Clock.call_at`, a plain
callback timer, so a stream costs no task), the circuit breakers' reset timeouts, the pool
watcher's interval and the event log's cache sweep. Tests inject a :class:`FakeClock` and
move time with :meth:`FakeClock.advance` instead of sleeping (as trio's ``MockClock``
does).

One wait is not a timer of the domain and stays on real time: the event log's group-commit
window (``commit_interval_ms``, a few ms that batch token frames into one SQLite
transaction). A fake clock that held frames back until a test moved it would change what
is committed together, not when anything times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["Clock", "FakeClock", "SystemClock", "Timer", "iso_utc", "window_time"]


class Timer(Protocol):
    """A callback armed by :meth:`Clock.call_at` (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Disarm the timer; the callback is not called (a no-op once it was)."""
        ...


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

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` on the event loop once :meth:`monotonic` reaches ``when``.

        A timer without a task: what a Step stream's heartbeat uses (STREAM-2000).

        Args:
            when: monotonic seconds of this clock; a time already past fires at the next
                opportunity.
            callback: called once, on the event loop thread; it may arm another timer.

        Returns:
            The armed timer, which :meth:`Timer.cancel` disarms.
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

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """``loop.call_later`` on the running asyncio loop (the loop Granian serves on).

        Raises:
            RuntimeError: no asyncio event loop runs in this thread.
        """
        return asyncio.get_running_loop().call_later(when - time.monotonic(), callback)


class _FakeTimer:
    """A :meth:`FakeClock.call_at` timer: :meth:`FakeClock.advance` calls it."""

    __slots__ = ("callback", "clock", "entry")

    def __init__(self, clock: FakeClock, callback: Callable[[], None]) -> None:
        self.clock = clock
        self.callback = callback
        self.entry: tuple[float, int, _Wakeable] | None = None

    def cancel(self) -> None:
        """Disarm; a no-op once fired or cancelled."""
        if self.entry is not None:
            self.clock._forget(self.entry)
            self.entry = None


_Wakeable = anyio.Event | anyio.CancelScope | _FakeTimer


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    :meth:`sleep`, :meth:`move_on_after` and :meth:`call_at` wake only when a test
    advances the clock to or past their wake time; nothing here waits in real time.
    Advance it from the event loop's thread (with a Litestar ``TestClient``, through
    ``client.blocking_portal.call(clock.advance, seconds)``).
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._seq = itertools.count()
        # (wake monotonic time, tie-break, event to set, scope to cancel or timer to call)
        self._timers: list[tuple[float, int, _Wakeable]] = []

    def now(self) -> float:
        """Wall-clock seconds since the epoch."""
        return self._wall

    def monotonic(self) -> float:
        """Monotonic seconds."""
        return self._mono

    @property
    def pending(self) -> int:
        """Sleeps, deadlines and timers still waiting for time to reach them."""
        return len(self._timers)

    @property
    def deadlines(self) -> list[float]:
        """The monotonic wake times of everything pending, earliest first (s)."""
        return sorted(at for at, _n, _w in self._timers)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds``; wake every sleep, cancel every
        :meth:`move_on_after` scope and call every :meth:`call_at` callback whose time has
        come, earliest first (a callback sees the clock already moved).

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
            elif isinstance(timer, _FakeTimer):
                timer.entry = None
                timer.callback()
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

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback()`` from the :meth:`advance` that reaches ``when`` (monotonic s;
        a time already reached fires at the next advance, ``advance(0)`` included).

        Returns:
            The armed timer.
        """
        timer = _FakeTimer(self, callback)
        timer.entry = (when, next(self._seq), timer)
        heapq.heappush(self._timers, timer.entry)
        return timer

    def _forget(self, entry: tuple[float, int, _Wakeable]) -> None:
        if entry in self._timers:
            self._timers.remove(entry)
            heapq.heapify(self._timers)


def window_time() -> float:
    """Real monotonic time (s), for the event log's group-commit window only: when the
    last group commit was, so that a frame of a quiet log need not wait a window out
    (STREAM-2000). Like the window itself, it is not a timer of the domain.

    Returns:
        ``time.monotonic()``.
    """
    return time.monotonic()


def iso_utc(ts: float) -> str:
    """RFC 3339 UTC timestamp with millisecond precision, e.g. ``2026-11-21T11:40:08.123Z``."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
