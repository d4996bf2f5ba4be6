"""The event log: the one source of truth for streams, replay and recovery (DESIGN.md §1).

* Frames are appended as their payload Structs (:mod:`contracts.events`); the log encodes
  each one and derives its frame type from the payload's class, so a type and its data
  are never paired by hand. A ``replay`` Step appends nothing: it is stored finished, by
  reference to its recording, whose frames its readers get (NERVE-4025).
* Durable frames get a per-Step sequence number and are committed to SQLite in groups
  (every ``commit_interval_ms`` or ``commit_max_frames``); a terminal frame commits at once,
  together with the Step's terminal status (STREAM-2000). The window only batches: a frame
  that becomes pending when the log has not committed for ``commit_interval_ms`` (the first
  frame of a quiet log, a slow engine's next token) is committed on the next pass of the
  event loop, with whatever else that pass appended, instead of waiting a window out.
* Readers are cursors. Committed frames of live Steps are also kept in a read-through
  cache so that many subscribers cost one list, not one query each; they are SSE-framed
  once, by the first read that needs them (a Step nobody reads is never framed). A
  finished Step's cache is evicted after a short linger and readers go back to disk.
  Nothing is shown to a reader before it is committed. The bookkeeping is O(1) per
  append and per lookup, whatever the cache holds: the count of active Steps is kept,
  not counted, and finished Steps wait for eviction in the order they finished
  (NERVE-4042).
* ``metrics`` and ``narration`` are ephemeral: each subscriber has a small bounded buffer
  that drops its oldest entry when full, and every drop is counted (STREAM-2003). An
  ephemeral frame of a Step that has durable frames waiting for their group commit rides
  along with that commit's wake-up (at most ``commit_interval_ms`` later) instead of
  waking its readers a second time.

* A run stream (NERVE-4100) subscribes to a whole Run: it is woken by every commit of
  frames of the Run's Steps (one dict lookup per committed Run, none when no run stream
  is open), by a Step of the Run stored finished by reference, and when the Run closes.
  It reads the frames from the store, never from the cache.
* On a store several processes share (PG-9103), a Step live in another process is read
  from the store, and its log is complete only at its terminal frame; its readers here are
  woken by :meth:`EventLog.notify_remote`, which the process's one listening connection
  calls for every commit anywhere (never by polling). A Step a survivor adopted while
  this process was taken for dead is fenced: see :mod:`orchestrator_core.eventlog_remote`.

All methods run on the event-loop thread; none of them awaits while holding state.
Subscriptions wait on plain asyncio futures (the server runs on asyncio, under Granian):
one future per wait and one timer per subscriber on the injected clock
(:meth:`Clock.call_at`), re-armed once per heartbeat, instead of an event and a cancel
scope per wait. The cache sweep runs on the injected clock too; only the group-commit
window is real time (see :mod:`orchestrator_core.clock`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import msgspec

from contracts.events import (
    FRAME_TYPE_OF,
    TERMINAL_FRAMES,
    DurablePayload,
    EphemeralPayload,
    TerminalPayload,
    sse_frame,
)
from orchestrator_core.canonical import b3_bytes
from orchestrator_core.clock import Clock, window_time
from orchestrator_core.eventlog_remote import RemoteReaders
from orchestrator_core.metrics import Metrics
from orchestrator_core.rows import EventRead, EventRow, StepUpdate
from orchestrator_core.store_base import Store
from orchestrator_core.subscriptions import Subscription

__all__ = ["EventLog", "Subscription"]

_enc = msgspec.json.Encoder()
# payload class -> stored frame type name: one dict lookup per appended frame
_TYPE_NAME: dict[type, str] = {cls: ftype.value for cls, ftype in FRAME_TYPE_OF.items()}
_TERMINAL_NAMES = frozenset(t.value for t in TERMINAL_FRAMES)

class _Live:
    __slots__ = ("digest", "done", "evict_at", "frames", "next_seq", "pending", "run_id",
                 "subs", "unframed")

    def __init__(self, run_id: str, next_seq: int) -> None:
        self.run_id = run_id
        self.next_seq = next_seq
        self.frames: list[bytes] = []  # committed SSE frames; index == seq
        self.unframed: list[EventRow] = []  # committed rows after ``frames``, not framed yet
        self.pending = False  # durable frames wait for their group commit
        self.done = False
        self.evict_at = 0.0
        self.subs: set[Subscription] = set()
        # (frames hashed, b3 of their SSE bytes): the finished log's content hash
        self.digest: tuple[int, str] | None = None

    def framed(self) -> list[bytes]:
        """Every committed frame, SSE-framed (frames the rows committed since last time)."""
        if self.unframed:
            self.frames += [sse_frame(row[1], row[3], row[4]) for row in self.unframed]
            self.unframed = []
        return self.frames


class EventLog(RemoteReaders):
    """Append, group-commit and read the durable frames of every Step.

    Args:
        store: the store (the event log's rows go through :meth:`Store.commit_events`).
        clock: injected time (eviction deadlines).
        metrics: Prometheus metrics.
        commit_interval_s: longest time a token frame waits for its commit.
        commit_max_frames: commit as soon as this many frames are pending.
        linger_s: how long a finished Step stays in the read-through cache.
        ephemeral_capacity: per-subscriber buffer of ``metrics``/``narration`` frames.
    """

    def __init__(self, store: Store, clock: Clock, metrics: Metrics, *,
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
        self._active = 0  # entries of ``_live`` not done
        # finished Steps in the order they finished, i.e. of ``evict_at`` (one linger)
        self._finished: deque[tuple[str, _Live]] = deque()
        self._pending: list[EventRow] = []
        self._pending_updates: dict[str, dict[str, Any]] = {}
        self._dirty = anyio.Event()
        self._last_commit = -float("inf")  # window_time() of the last group commit
        self._run_subs: dict[str, set[Subscription]] = {}  # run id -> its run streams
        self.shared = bool(getattr(store, "shared", False))  # other processes write it
        self._remote: dict[str, set[Subscription]] = {}  # step id -> readers, not live here
        self.fenced: set[str] = set()  # adopted by another process (PG-9108)
        self.on_fenced: Callable[[str], None] = lambda _step_id: None

    # -- writing -----------------------------------------------------------------------

    def open(self, step_id: str, run_id: str) -> None:
        """Start the live cache of a new Step (its log is empty)."""
        old = self._live.get(step_id)
        self._active += old is None or old.done
        self._live[step_id] = _Live(run_id, 0)

    def active(self) -> int:
        """Steps that can still receive frames (queued or running); O(1), a kept count."""
        return self._active

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

    def append(self, step_id: str, payload: DurablePayload,
               update: dict[str, Any] | None = None) -> int:
        """Buffer one non-terminal durable frame; it is committed within the interval.

        The frame's type is the payload's (``contracts.events.FRAME_TYPE_OF``) and its
        data the payload's JSON (STREAM-2000, STREAM-2001). This runs once per token.

        Args:
            step_id: a Step opened on this log and not finished.
            payload: the frame's data, e.g. a ``TokenData``.
            update: Step columns (e.g. ``status``) committed in the same transaction.

        Returns:
            The frame's sequence number.

        Raises:
            RuntimeError: the Step already has its terminal frame.
            KeyError: ``payload`` is not a frame payload Struct.
        """
        return self.append_recorded(step_id, _TYPE_NAME[type(payload)],
                                    _enc.encode(payload), update)

    def finish(self, step_id: str, payload: TerminalPayload, update: dict[str, Any]) -> int:
        """Commit everything pending plus a terminal frame (``end`` or ``error``, derived
        from the payload) and the Step's final columns, in one transaction, then wake
        readers (DESIGN.md §1: terminal frames commit first; STREAM-2000).

        Returns:
            The terminal frame's sequence number.
        """
        return self.finish_recorded(step_id, _TYPE_NAME[type(payload)], _enc.encode(payload),
                                    update)

    def append_recorded(self, step_id: str, frame_type: str, data: bytes,
                        update: dict[str, Any] | None = None) -> int:
        """Buffer a non-terminal frame given as its stored type name and data bytes, kept
        as they are (STREAM-2001).

        Returns:
            The frame's sequence number.

        Raises:
            RuntimeError: the Step already has its terminal frame.
        """
        if step_id in self.fenced:
            return -1  # adopted by another process: dropped (PG-9108)
        live = self._live[step_id]
        if live.done:
            raise RuntimeError(f"step {step_id} already has a terminal frame")
        seq = live.next_seq
        live.next_seq += 1
        live.pending = True
        pending = self._pending
        pending.append((step_id, seq, live.run_id, frame_type, data))
        if update:
            self._pending_updates.setdefault(step_id, {}).update(update)
        if len(pending) >= self.commit_max_frames:
            self.flush()
        elif len(pending) == 1:
            self._dirty.set()
        return seq

    def finish_recorded(self, step_id: str, frame_type: str, data: bytes,
                        update: dict[str, Any]) -> int:
        """:meth:`finish` with a terminal frame given as its stored type name and bytes.

        Returns:
            The terminal frame's sequence number.
        """
        assert frame_type in _TERMINAL_NAMES
        if step_id in self.fenced:
            return -1
        live = self._live[step_id]
        seq = live.next_seq
        live.next_seq += 1
        self._pending.append((step_id, seq, live.run_id, frame_type, data))
        if not live.done:
            live.done = True
            self._active -= 1
            live.evict_at = self.clock.monotonic() + self.linger_s
            self._finished.append((step_id, live))
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
        last: dict[str, int] = {row[0]: row[1] for row in rows}  # rows are in seq order
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
            rows = self._commit(rows, updates)  # without the fenced Steps' (PG-9108)
        except BaseException:
            self._pending = rows + self._pending
            for step_id, changes in queued.items():
                self._pending_updates.setdefault(step_id, {}).update(changes)
            raise
        self._last_commit = window_time()
        self.metrics.group_commits.inc()
        self.metrics.events_committed.inc(len(rows))
        lives = self._live
        for row in rows:
            live = lives.get(row[0])
            if live is not None:
                live.unframed.append(row)  # framed by the first read that needs it
        for step_id in last:
            live = lives.get(step_id)
            if live is not None:
                live.pending = False
                for sub in live.subs:
                    sub.notify()
        if self._run_subs:  # run streams of the Runs committed to (NERVE-4100)
            for run_id in {row[2] for row in rows}:
                self.notify_run(run_id)

    async def run_flusher(self) -> None:
        """Background task: commit pending frames at most ``commit_interval_s`` after the
        previous group commit (real time: a batching window, not a timer of the domain),
        and at once, on the loop pass after the first frame became pending, when the log
        has been quiet for a whole window (STREAM-2000); evict finished Steps from the
        cache after their linger, swept every second of the injected clock (NERVE-4060)."""
        next_sweep = self.clock.monotonic() + 1.0
        while True:
            with self.clock.move_on_after(max(0.0, next_sweep - self.clock.monotonic())):
                await self._dirty.wait()
            self._dirty = anyio.Event()
            if self._pending:
                wait = self._last_commit + self.commit_interval_s - window_time()
                if wait > 0:
                    await anyio.sleep(wait)
                self.flush()
            now = self.clock.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                self._evict(now)

    def _evict(self, now: float) -> None:
        """Drop the finished Steps whose linger has passed from the cache, oldest first,
        visiting no other: one still read is looked at again at the next sweep."""
        finished, lives = self._finished, self._live
        read: list[tuple[str, _Live]] = []
        while finished and finished[0][1].evict_at <= now:
            step_id, live = finished.popleft()
            if lives.get(step_id) is not live:
                continue  # evicted already, or opened again since
            if live.subs:
                read.append((step_id, live))
            else:
                del lives[step_id]
        finished.extendleft(reversed(read))

    # -- ephemeral ---------------------------------------------------------------------

    def publish_ephemeral(self, step_id: str, payload: EphemeralPayload) -> None:
        """Offer a ``metrics``/``narration`` frame (the type follows from the payload) to
        the Step's current subscribers.

        When durable frames of the Step wait for their group commit, the frame waits for
        that commit's wake-up (at most ``commit_interval_s``) and goes out in the same
        write; otherwise its readers are woken now (STREAM-2003).
        """
        live = self._live.get(step_id)
        if live is None or not live.subs:
            return
        frame_type = _TYPE_NAME[type(payload)]
        frame = sse_frame(None, frame_type, _enc.encode(payload))
        wake = not live.pending
        for sub in live.subs:
            sub.push_ephemeral(frame_type, frame, wake)

    # -- reading -----------------------------------------------------------------------

    def subscribe(self, step_id: str, heartbeat_s: float | None = None) -> Subscription:
        """Register a reader for wake-ups and ephemeral frames of a live Step.

        Args:
            step_id: the Step.
            heartbeat_s: idle time after which :meth:`Subscription.wait` returns False
                (s); None: never.
        """
        sub = Subscription(step_id, self.ephemeral_capacity, self.metrics, self.clock,
                           heartbeat_s)
        live = self._live.get(step_id)
        if live is not None:
            live.subs.add(sub)
        elif self.shared:
            self._remote.setdefault(step_id, set()).add(sub)
        self.metrics.sse_subscribers.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a reader (and stop its heartbeat timer)."""
        sub.close()
        live = self._live.get(sub.step_id)
        if live is not None:
            live.subs.discard(sub)
        remote = self._remote.get(sub.step_id)
        if remote is not None:
            remote.discard(sub)
            if not remote:
                del self._remote[sub.step_id]
        self.metrics.sse_subscribers.dec()

    def read(self, step_id: str, after_seq: int) -> tuple[list[bytes], bool]:
        """Committed SSE frames with ``seq > after_seq`` and whether the log is complete.

        Returns:
            ``(frames, done)``; ``done`` is True once the terminal frame is among the
            committed frames (or the Step is no longer live, i.e. it was finished before).
        """
        live = self._live.get(step_id)
        if live is not None:
            return live.framed()[after_seq + 1:], live.done
        rows = self.store.read_events(step_id, after_seq)
        frames = [sse_frame(seq, ftype, data) for seq, ftype, data in rows]
        if self.shared:  # maybe live in another process: done at its terminal frame
            if rows:
                return frames, rows[-1][1] in _TERMINAL_NAMES
            step = self.store.get_step(step_id)
            return frames, step is None or step.status not in ("queued", "running")
        return frames, True

    def read_rows(self, step_id: str) -> list[EventRead]:
        """Every committed frame of a Step as ``(seq, type, data)`` (replay source)."""
        self.flush()
        return self.store.read_events(step_id, -1)

    # -- served by reference (NERVE-4025) ----------------------------------------------

    def sealed_frames(self, step_id: str) -> tuple[list[bytes], str] | None:
        """The whole log of a finished Step, SSE-framed, and its content hash: ``b3`` of
        the frames' SSE bytes joined (NERVE-4025, STREAM-2013).

        While the Step is in the read-through cache its list is returned itself (not a
        copy: a finished Step's list never changes again); otherwise its rows are read
        from the store and framed.

        The hash is computed once per cached log: a finished Step's cached list never
        changes, so its bytes are hashed the first time they are asked for and the
        result is kept with them (with the count of frames it covers) until the cache
        evicts them. A log read from the store (not cached) is hashed on every call.

        Returns:
            ``(frames, "b3:<hex>")``, or None when the log does not end with a terminal
            frame.
        """
        live = self._live.get(step_id)
        if live is not None and live.done:
            frames = live.framed()
            if live.digest is None or live.digest[0] != len(frames):
                live.digest = (len(frames), b3_bytes(b"".join(frames)))
            return frames, live.digest[1]
        rows = self.store.read_events(step_id, -1)
        if not rows or rows[-1][1] not in _TERMINAL_NAMES:
            return None
        frames = [sse_frame(seq, ftype, data) for seq, ftype, data in rows]
        return frames, b3_bytes(b"".join(frames))

    def open_served(self, step_id: str, run_id: str, frames: list[bytes],
                    digest: str | None = None) -> None:
        """Cache the frames of a Step stored already finished, served by reference to a
        recording (NERVE-4025): its readers get ``frames`` (shared, not copied) without a
        query until the linger passes, as the readers of a Step that just finished do;
        then they read the recording's rows from the store.

        Args:
            step_id: the Step served by reference (stored, finished).
            run_id: its Run.
            frames: the recording's whole log, SSE-framed (:meth:`sealed_frames`).
            digest: their content hash (:meth:`sealed_frames`), kept with them.
        """
        live = _Live(run_id, len(frames))
        live.frames = frames
        live.digest = None if digest is None else (len(frames), digest)
        live.done = True
        live.evict_at = self.clock.monotonic() + self.linger_s
        self._live[step_id] = live
        self._finished.append((step_id, live))
        self.notify_run(run_id)

    # -- run streams (NERVE-4100) ------------------------------------------------------

    def subscribe_run(self, run_id: str, heartbeat_s: float | None = None) -> Subscription:
        """Register a reader of a whole Run: it is woken by every commit of frames of a
        Step of the Run, by a Step stored finished by reference in it, and by
        :meth:`notify_run` (the Run was closed). It gets no ephemeral frame.

        Args:
            run_id: the Run.
            heartbeat_s: idle time after which :meth:`Subscription.wait` returns False
                (s); None: never.
        """
        sub = Subscription(run_id, 0, self.metrics, self.clock, heartbeat_s)
        self._run_subs.setdefault(run_id, set()).add(sub)
        self.metrics.sse_subscribers.inc()
        return sub

    def unsubscribe_run(self, sub: Subscription) -> None:
        """Forget a run reader (and stop its heartbeat timer)."""
        sub.close()
        subs = self._run_subs.get(sub.step_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._run_subs[sub.step_id]
        self.metrics.sse_subscribers.dec()

    def notify_run(self, run_id: str) -> None:
        """Wake every reader of the Run (new frames, or the Run was closed)."""
        for sub in self._run_subs.get(run_id, ()):
            sub.notify()
