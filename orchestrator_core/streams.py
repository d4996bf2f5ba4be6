"""A Step's SSE stream: a cursor over its durable log, written straight to the client.

:class:`StepStream` is what :meth:`Orchestrator.open_stream` hands to the HTTP layer once
the Step is known to exist (STREAM-2000). Its :meth:`~StepStream.pump` loop reads every
committed frame after the cursor, appends the reader's buffered ephemeral frames
(STREAM-2003), writes them as one chunk, and sleeps until the next commit, a
``: keep-alive`` heartbeat, or the client's disconnect (STREAM-2002). Nothing is queued
per reader but the small ephemeral buffer: a slow reader lags in the log.

The loop is a plain coroutine driven by the HTTP handler's own task (no extra task, no
async generator, no cancel scope per wait), which is what a stream costs in CPU and
memory per subscriber.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from contracts.events import sse_comment
from orchestrator_core.eventlog import EventLog, Subscription

__all__ = ["KEEP_ALIVE", "StepStream", "Write"]

KEEP_ALIVE = sse_comment("keep-alive")
"""The heartbeat comment written to an idle stream (``: keep-alive``)."""

Write = Callable[[bytes], Awaitable[None]]
"""Writes one chunk of SSE bytes to the client."""


class StepStream:
    """The SSE stream of one Step, validated and not started yet.

    Args:
        log: the event log.
        step_id: the Step.
        cursor: the last sequence number the reader has (``-1``: from the start;
            ``Last-Event-ID`` otherwise, STREAM-2004).
        heartbeat_s: idle time before a ``: keep-alive`` comment (s).
        on_abandoned: called with the Step id when the reader leaves before the
            terminal frame (cancel-on-disconnect, STREAM-2002).
    """

    __slots__ = ("_gone", "_log", "_on_abandoned", "_sub", "cursor", "heartbeat_s",
                 "step_id")

    def __init__(self, log: EventLog, step_id: str, cursor: int, heartbeat_s: float,
                 on_abandoned: Callable[[str], None]) -> None:
        self._log = log
        self.step_id = step_id
        self.cursor = cursor
        self.heartbeat_s = heartbeat_s
        self._on_abandoned = on_abandoned
        self._sub: Subscription | None = None
        self._gone = False

    def hang_up(self) -> None:
        """The client went away: end :meth:`pump` at its next wake-up (now, if it sleeps)."""
        self._gone = True
        if self._sub is not None:
            self._sub.hang_up()

    def ended_before(self) -> bool:
        """Whether the reader already has the terminal frame: the cursor is at or after it.

        A stream resumed with ``Last-Event-ID`` >= the terminal frame's sequence number
        has nothing left to send; the HTTP layer answers it 204 No Content, so that a
        browser's ``EventSource`` stops reconnecting (STREAM-2012). A stream read from the
        start (cursor -1) never counts, and neither does a live Step.

        Returns:
            True when :meth:`pump` would write nothing and return at once.
        """
        if self.cursor < 0:
            return False
        frames, done = self._log.read(self.step_id, self.cursor)
        return done and not frames

    async def pump(self, write: Write) -> bool:
        """Write the stream until its terminal frame, or until :meth:`hang_up`.

        Each write carries every frame ready at that moment: the committed durable
        frames after the cursor, then the buffered ephemeral frames (never before the
        Step's first durable frame nor after its terminal frame, STREAM-2003).

        Args:
            write: sends one chunk to the client.

        Returns:
            True when the terminal frame was written.
        """
        log, step_id = self._log, self.step_id
        sub = self._sub = log.subscribe(step_id, self.heartbeat_s)
        if self._gone:
            sub.hang_up()
        cursor = self.cursor
        done = False
        try:
            while not sub.gone:
                frames, done = log.read(step_id, cursor)
                cursor += len(frames)
                eph = sub.drain_ephemeral()
                if eph and cursor >= 0 and not done:
                    frames = frames + eph
                if frames:
                    await write(frames[0] if len(frames) == 1 else b"".join(frames))
                    sub.wrote()
                if done:
                    return True
                if not await sub.wait() and not sub.gone:
                    await write(KEEP_ALIVE)
                    sub.wrote()
            return False
        finally:
            self.cursor = cursor
            self._sub = None
            log.unsubscribe(sub)
            if not done:
                self._on_abandoned(step_id)
