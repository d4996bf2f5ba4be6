"""One reader of one Step's event log: its wake-up, its heartbeat and its ephemeral buffer.

The event log (:mod:`orchestrator_core.eventlog`) notifies a :class:`Subscription` when
frames are committed; the SSE pump waits on it. A subscription waits on a plain asyncio
future (the server runs on asyncio, under Granian) and keeps one heartbeat timer on the
injected clock (NERVE-4060), re-armed once per heartbeat.
"""

from __future__ import annotations

import asyncio

from orchestrator_core.clock import Clock, Timer
from orchestrator_core.metrics import Metrics

__all__ = ["Subscription"]


class Subscription:
    """One reader of one Step: a wake-up flag, a heartbeat timer and a bounded ephemeral
    buffer (STREAM-2000, STREAM-2003).

    :meth:`wait` returns True when new frames may be ready and False when the reader
    wrote nothing for ``heartbeat_s`` of the injected clock (time for a ``: keep-alive``,
    NERVE-4060). The heartbeat is one timer per subscriber that is re-armed only when it
    fires, not one per wait.

    Args:
        step_id: the Step read.
        capacity: ephemeral frames kept; the oldest is dropped first.
        metrics: where drops are counted.
        clock: injected time of the heartbeat.
        heartbeat_s: idle time before :meth:`wait` returns False (s); None: never.
    """

    __slots__ = ("_clock", "_loop", "_metrics", "_timer", "_waiter", "_woken", "capacity",
                 "dropped", "ephemeral", "gone", "heartbeat_s", "last_write", "step_id")

    def __init__(self, step_id: str, capacity: int, metrics: Metrics, clock: Clock,
                 heartbeat_s: float | None = None) -> None:
        self.step_id = step_id
        self.capacity = capacity
        self.ephemeral: list[bytes] = []
        self.dropped = 0
        self.heartbeat_s = heartbeat_s
        self.last_write = 0.0
        self.gone = False
        self._clock = clock
        self._metrics = metrics
        self._woken = False
        self._waiter: asyncio.Future[bool] | None = None
        self._timer: Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        """Wake the reader (new durable frames were committed)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def hang_up(self) -> None:
        """The reader's connection is gone: set :attr:`gone` and wake the reader."""
        self.gone = True
        self.notify()

    def push_ephemeral(self, frame_type: str, frame: bytes, wake: bool = True) -> None:
        """Queue an ephemeral frame, dropping the oldest when the buffer is full.

        Args:
            frame_type: counted under this label when a frame is dropped.
            frame: the SSE-framed ephemeral event.
            wake: wake the reader now; False when a commit will wake it soon anyway.
        """
        buf = self.ephemeral
        buf.append(frame)
        if len(buf) > self.capacity:
            del buf[0]
            self.dropped += 1
            self._metrics.sse_dropped.labels(frame_type=frame_type).inc()
        if wake:
            self.notify()

    def drain_ephemeral(self) -> list[bytes]:
        """Take every buffered ephemeral frame."""
        out = self.ephemeral
        if out:
            self.ephemeral = []
        return out

    def wrote(self) -> None:
        """Record that the reader just wrote to its client (restarts the idle clock)."""
        if self._loop is not None:
            self.last_write = self._clock.monotonic()

    async def wait(self) -> bool:
        """Sleep until :meth:`notify` (or was called since the last wait), or until the
        reader has been idle for ``heartbeat_s``.

        Returns:
            True when woken (frames may be ready, or :attr:`gone`), False when a
            heartbeat is due.
        """
        if self._woken:
            self._woken = False
            return True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self.last_write = self._clock.monotonic()
            if self.heartbeat_s is not None:
                self._timer = self._clock.call_at(self.last_write + self.heartbeat_s,
                                                  self._beat)
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None
            self._woken = False

    def _beat(self) -> None:
        """Timer callback: end an idle wait with False, then re-arm for the next beat."""
        hb = self.heartbeat_s
        assert hb is not None
        now = self._clock.monotonic()
        due = self.last_write + hb
        if now >= due:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(False)
            due = now + hb
        self._timer = self._clock.call_at(due, self._beat)

    def close(self) -> None:
        """Stop the heartbeat timer (the reader is done)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


