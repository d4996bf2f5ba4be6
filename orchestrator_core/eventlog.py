"""The event log: the one source of truth for streams, replay and recovery (DESIGN.md §1).

* Durable frames get a per-Step sequence number and are committed to SQLite in groups
  (every ``commit_interval_ms`` or ``commit_max_frames``); a terminal frame commits at once,
  together with the Step's terminal status (STREAM-2000).
* Readers are cursors. Committed frames of live Steps are also kept, SSE-encoded, in a
  read-through cache so that many subscribers cost one list, not one query each; a
  finished Step's cache is evicted after a short linger and readers go back to disk.
  Nothing is shown to a reader before it is committed.
* ``metrics`` and ``narration`` are ephemeral: each subscriber has a small bounded buffer
  that drops its oldest entry when full, and every drop is counted (STREAM-2003).

All methods run on the event-loop thread; none of them awaits while holding state.
"""

from __future__ import annotations

import collections
from typing import Any

import anyio

from contracts.events import TERMINAL_FRAMES, FrameType, sse_frame
from orchestrator_core.clock import Clock
from orchestrator_core.metrics import Metrics
from orchestrator_core.store import EventRow, SqliteStore, StepUpdate

__all__ = ["EventLog", "Subscription"]


class Subscription:
    """One reader of one Step: a wake-up flag and a bounded ephemeral buffer.

    Args:
        capacity: ephemeral frames kept; the oldest is dropped first.
    """

    def __init__(self, step_id: str, capacity: int, metrics: Metrics) -> None:
        self.step_id = step_id
        self.ephemeral: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self.dropped = 0
        self._metrics = metrics
        self._wake = anyio.Event()

    def notify(self) -> None:
        """Wake the reader (new durable frames were committed)."""
        self._wake.set()

    def push_ephemeral(self, frame_type: str, frame: bytes) -> None:
        """Queue an ephemeral frame, dropping the oldest when the buffer is full."""
        if len(self.ephemeral) == self.ephemeral.maxlen:
            self.dropped += 1
            self._metrics.sse_dropped.labels(frame_type=frame_type).inc()
        self.ephemeral.append(frame)
        self._wake.set()

    def drain_ephemeral(self) -> list[bytes]:
        """Take every buffered ephemeral frame."""
        out = list(self.ephemeral)
        self.ephemeral.clear()
        return out

    async def wait(self) -> None:
        """Sleep until :meth:`notify` or :meth:`push_ephemeral` is called (or was)."""
        await self._wake.wait()
        self._wake = anyio.Event()


class _Live:
    __slots__ = ("done", "evict_at", "frames", "next_seq", "run_id", "subs")

    def __init__(self, run_id: str, next_seq: int, frames: list[bytes]) -> None:
        self.run_id = run_id
        self.next_seq = next_seq
        self.frames = frames  # committed SSE frames; index == seq
        self.done = False
        self.evict_at = 0.0
        self.subs: set[Subscription] = set()


class EventLog:
    """Append, group-commit and read the durable frames of every Step.

    Args:
        store: the SQLite store.
        clock: injected time (eviction deadlines).
        metrics: Prometheus metrics.
        commit_interval_s: longest time a token frame waits for its commit.
        commit_max_frames: commit as soon as this many frames are pending.
        linger_s: how long a finished Step stays in the read-through cache.
        ephemeral_capacity: per-subscriber buffer of ``metrics``/``narration`` frames.
    """

    def __init__(self, store: SqliteStore, clock: Clock, metrics: Metrics, *,
                 commit_interval_s: float = 0.002, commit_max_frames: int = 64,
                 linger_s: float = 30.0, ephemeral_capacity: int = 16) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.commit_interval_s = commit_interval_s
        self.commit_max_frames = commit_max_frames
        self.linger_s = linger_s
        self.ephemeral_capacity = ephemeral_capacity
        self._live: dict[str, _Live] = {}
        self._pending: list[EventRow] = []
        self._pending_updates: dict[str, dict[str, Any]] = {}
        self._dirty = anyio.Event()

    # -- writing -----------------------------------------------------------------------

    def open(self, step_id: str, run_id: str) -> None:
        """Start the live cache of a new Step (its log is empty)."""
        self._live[step_id] = _Live(run_id, 0, [])

    def active(self) -> int:
        """Steps that can still receive frames (queued or running)."""
        return sum(1 for lv in self._live.values() if not lv.done)

    def run_of(self, step_id: str) -> str | None:
        """Run of a Step still in the live cache, else None."""
        live = self._live.get(step_id)
        return live.run_id if live is not None else None

    def subscribers(self, step_id: str) -> int:
        """How many readers a live Step has now."""
        live = self._live.get(step_id)
        return len(live.subs) if live is not None else 0

    def is_live(self, step_id: str) -> bool:
        """True while the Step can still receive frames."""
        live = self._live.get(step_id)
        return live is not None and not live.done

    def append(self, step_id: str, frame_type: FrameType, data: bytes,
               update: dict[str, Any] | None = None) -> int:
        """Buffer one non-terminal durable frame; it is committed within the interval.

        Args:
            update: Step columns (e.g. ``status``) committed in the same transaction.

        Returns:
            The frame's sequence number.
        """
        live = self._live[step_id]
        if live.done:
            raise RuntimeError(f"step {step_id} already has a terminal frame")
        seq = live.next_seq
        live.next_seq += 1
        self._pending.append((step_id, seq, live.run_id, frame_type.value, data))
        if update:
            self._pending_updates.setdefault(step_id, {}).update(update)
        if len(self._pending) >= self.commit_max_frames:
            self.flush()
        else:
            self._dirty.set()
        return seq

    def finish(self, step_id: str, frame_type: FrameType, data: bytes,
               update: dict[str, Any]) -> int:
        """Commit everything pending plus a terminal frame and the Step's final columns,
        in one transaction, then wake readers (DESIGN.md §1: terminal frames commit first).

        Returns:
            The terminal frame's sequence number.
        """
        assert frame_type in TERMINAL_FRAMES
        live = self._live[step_id]
        seq = live.next_seq
        live.next_seq += 1
        self._pending.append((step_id, seq, live.run_id, frame_type.value, data))
        live.done = True
        live.evict_at = self.clock.monotonic() + self.linger_s
        self.flush(extra={step_id: update})
        return seq

    def flush(self, extra: dict[str, dict[str, Any]] | None = None) -> None:
        """Commit all pending frames in one transaction and wake their readers."""
        rows, self._pending = self._pending, []
        queued, self._pending_updates = self._pending_updates, {}
        for step_id, changes in (extra or {}).items():
            queued.setdefault(step_id, {}).update(changes)
        extra = queued
        if not rows and not extra:
            return
        last: dict[str, int] = {}
        for step_id, seq, *_ in rows:
            last[step_id] = seq
        updates: list[StepUpdate] = []
        for step_id, seq in last.items():
            changes = {"last_seq": seq}
            if extra and step_id in extra:
                changes.update(extra[step_id])
            updates.append((step_id, changes))
        for step_id, changes in (extra or {}).items():
            if step_id not in last:
                updates.append((step_id, changes))
        try:
            self.store.commit_events(rows, updates)
        except BaseException:
            self._pending = rows + self._pending
            for step_id, changes in queued.items():
                self._pending_updates.setdefault(step_id, {}).update(changes)
            raise
        self.metrics.group_commits.inc()
        self.metrics.events_committed.inc(len(rows))
        touched: set[str] = set()
        for step_id, seq, _run, ftype, data in rows:
            live = self._live.get(step_id)
            if live is not None:
                live.frames.append(sse_frame(seq, ftype, data))
                touched.add(step_id)
        for step_id in touched:
            for sub in self._live[step_id].subs:
                sub.notify()

    async def run_flusher(self) -> None:
        """Background task: commit pending frames every ``commit_interval_s``; evict
        finished Steps from the cache after their linger."""
        next_sweep = self.clock.monotonic() + 1.0
        while True:
            with anyio.move_on_after(1.0):
                await self._dirty.wait()
            self._dirty = anyio.Event()
            if self._pending:
                await anyio.sleep(self.commit_interval_s)
                self.flush()
            now = self.clock.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                for step_id in [s for s, lv in self._live.items()
                                if lv.done and lv.evict_at <= now and not lv.subs]:
                    del self._live[step_id]

    # -- ephemeral ---------------------------------------------------------------------

    def publish_ephemeral(self, step_id: str, frame_type: FrameType, data: bytes) -> None:
        """Offer a ``metrics``/``narration`` frame to the Step's current subscribers."""
        live = self._live.get(step_id)
        if live is None or not live.subs:
            return
        frame = sse_frame(None, frame_type.value, data)
        for sub in live.subs:
            sub.push_ephemeral(frame_type.value, frame)

    # -- reading -----------------------------------------------------------------------

    def subscribe(self, step_id: str) -> Subscription:
        """Register a reader for wake-ups and ephemeral frames of a live Step."""
        sub = Subscription(step_id, self.ephemeral_capacity, self.metrics)
        live = self._live.get(step_id)
        if live is not None:
            live.subs.add(sub)
        self.metrics.sse_subscribers.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a reader."""
        live = self._live.get(sub.step_id)
        if live is not None:
            live.subs.discard(sub)
        self.metrics.sse_subscribers.dec()

    def read(self, step_id: str, after_seq: int) -> tuple[list[bytes], bool]:
        """Committed SSE frames with ``seq > after_seq`` and whether the log is complete.

        Returns:
            ``(frames, done)``; ``done`` is True once the terminal frame is among the
            committed frames (or the Step is no longer live, i.e. it was finished before).
        """
        live = self._live.get(step_id)
        if live is not None:
            return live.frames[after_seq + 1:], live.done
        rows = self.store.read_events(step_id, after_seq)
        return [sse_frame(seq, ftype, data) for seq, ftype, data in rows], True

    def read_rows(self, step_id: str) -> list[tuple[int, str, bytes]]:
        """Every committed frame of a Step as ``(seq, type, data)`` (replay source)."""
        self.flush()
        return self.store.read_events(step_id, -1)
