"""A Run's SSE stream: a cursor over the run log, written straight to the client
(NERVE-4100, NERVE-4101, NERVE-4102).

Every durable frame of every Step of a Run has a run position, 0, 1, ... in the order
the Run's frames were committed (the run log of schema v13). :class:`RunStream` writes
them from the position after its cursor as :class:`~contracts.run_life.RunFrame` events
(``id:`` the position, ``event:`` the frame type), catching up from disk a bounded page
at a time and then sleeping until a commit of the Run wakes it: a slow reader lags in the
log and costs no memory beyond one page (NERVE-4102). A Step served by reference
(``replay``, a fork's inherited Step) has its positions too, and its frames are read
from the Step that holds them, byte for byte as its own stream carries them.

Once the Run is closed and none of its Steps is live, the stream writes one ``run_end``
event (``id:`` the Run's frame count) and ends; a reader resuming at or after it has
nothing left (the HTTP layer answers 204, NERVE-4101).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from contracts.events import sse_frame
from contracts.run_life import RUN_END_EVENT, RunEndData
from orchestrator_core.eventlog import EventLog
from orchestrator_core.store_base import Store
from orchestrator_core.streams import KEEP_ALIVE, StepStream, Write

__all__ = ["PAGE_ENTRIES", "PAGE_FRAMES", "RunStream"]

PAGE_ENTRIES = 256
"""Run log entries read per pass (an entry is a Step's frames of one commit)."""
PAGE_FRAMES = 1024
"""Frames written per pass at most: what one reader holds in memory at a time."""

_enc = msgspec.json.Encoder()


def _no_abandon(_run_id: str) -> None:
    """A run reader leaving cancels nothing (its Steps have their own readers)."""


class RunStream(StepStream):
    """The SSE stream of one Run, validated and not started yet (NERVE-4100).

    It is a :class:`StepStream` to the HTTP layer (``pump``, ``hang_up``,
    ``ended_before``) over the run log instead of one Step's log.

    Args:
        log: the event log (its run subscriptions wake the reader).
        store: the store (the run log and the frames are read from it).
        run_id: the Run.
        cursor: the last run position the reader has (``-1``: from the start;
            ``Last-Event-ID`` otherwise).
        heartbeat_s: idle time before a ``: keep-alive`` comment (s).
        end_of: the Run's ``run_end`` data once it is closed with no live Step, else
            None (called with no await since the last read, so no frame can be missed).
    """

    __slots__ = ("_end_of", "_store", "run_id")

    def __init__(self, log: EventLog, store: Store, run_id: str, cursor: int,
                 heartbeat_s: float, end_of: Callable[[str], RunEndData | None]) -> None:
        super().__init__(log, run_id, cursor, heartbeat_s, _no_abandon)
        self._store = store
        self._end_of = end_of
        self.run_id = run_id

    def ended_before(self) -> bool:
        """Whether the reader already has the ``run_end`` event: the Run is over and the
        cursor is at or after its frame count (NERVE-4101). A read from the start never
        counts.

        Returns:
            True when :meth:`pump` would write nothing new.
        """
        if self.cursor < 0 or self._end_of(self.run_id) is None:
            return False
        return self.cursor >= self._store.run_log_end(self.run_id)

    def _page(self, cursor: int) -> tuple[list[bytes], int, bool]:
        """The SSE events after ``cursor``: at most :data:`PAGE_FRAMES` frames from at
        most :data:`PAGE_ENTRIES` run log entries.

        Returns:
            ``(events, new cursor, more)``; ``more`` is True when the page was full (read
            again before sleeping).
        """
        store, out = self._store, []
        entries = store.run_log_page(self.run_id, cursor, PAGE_ENTRIES)
        budget = PAGE_FRAMES
        for pos, step_id, seq, n, step_type in entries:
            skip = max(0, cursor + 1 - pos)
            if skip >= n:
                continue
            take = min(n - skip, budget)
            head = (b'{"step_id":' + _enc.encode(step_id) + b',"step_type":'
                    + _enc.encode(step_type) + b',"seq":')
            for fseq, ftype, data in store.read_events(step_id, seq + skip - 1, take):
                cursor = pos + fseq - seq
                out.append(sse_frame(cursor, ftype, b"%s%d,\"data\":%s}" % (head, fseq, data)))
            budget -= take
            if budget <= 0:
                return out, cursor, True
        return out, cursor, len(entries) == PAGE_ENTRIES

    async def pump(self, write: Write) -> bool:
        """Write the Run's frames until its ``run_end`` event, or until :meth:`hang_up`.

        Args:
            write: sends one chunk to the client.

        Returns:
            True when the ``run_end`` event was written.
        """
        log = self._log
        sub = self._sub = log.subscribe_run(self.run_id, self.heartbeat_s)
        if self._gone:
            sub.hang_up()
        cursor = self.cursor
        try:
            while not sub.gone:
                events, cursor, more = self._page(cursor)
                end = None if more else self._end_of(self.run_id)
                if end is not None:
                    events.append(sse_frame(self._store.run_log_end(self.run_id),
                                            RUN_END_EVENT, _enc.encode(end)))
                if events:
                    await write(events[0] if len(events) == 1 else b"".join(events))
                    sub.wrote()
                if end is not None:
                    return True
                if more:
                    continue
                if not await sub.wait() and not sub.gone:
                    await write(KEEP_ALIVE)
                    sub.wrote()
            return False
        finally:
            self.cursor = cursor
            self._sub = None
            log.unsubscribe_run(sub)
