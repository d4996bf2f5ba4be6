"""The event log's readers of Steps written by other processes, and its fencing
(DESIGN.md §7; PG-9103, PG-9108).

:class:`RemoteReaders` is a part of :class:`~orchestrator_core.eventlog.EventLog`; it only
matters on a store several processes share (PostgreSQL). On SQLite nothing here runs:
every Step is live here, no notification arrives, and no commit is ever fenced.

* A reader of a Step not live in this process is kept by Step id and woken by
  :meth:`RemoteReaders.notify_remote`, which the process's one listening connection calls
  for every commit anywhere (PG-9103).
* A group commit the store refuses with :class:`~orchestrator_core.fencing.StepFenced`
  (the Steps were adopted by a survivor while this process was taken for dead) is made
  again without those Steps' writes; each fenced Step leaves the live cache, its readers
  become readers of a Step not live here (they read the adopter's frames from the store
  and are woken by its commits), its later writes are dropped, and ``on_fenced`` stops
  its task without a terminal frame (PG-9108).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from orchestrator_core.fencing import StepFenced
from orchestrator_core.rows import EventRow, StepUpdate
from orchestrator_core.store_base import Store
from orchestrator_core.subscriptions import Subscription

__all__ = ["RemoteReaders"]

_log = logging.getLogger("orchestratord.cluster")


class _LiveView(Protocol):
    done: bool
    subs: set[Subscription]


class RemoteReaders:
    """Readers of Steps live in other processes, and fenced Steps [PG-9103, PG-9108]."""

    store: Store
    _live: dict[str, Any]  # step id -> its ``_Live`` (eventlog.py)
    _active: int
    _remote: dict[str, set[Subscription]]  # step id -> readers here, Step not live here
    _run_subs: dict[str, set[Subscription]]
    _pending: list[EventRow]
    _pending_updates: dict[str, dict[str, Any]]
    fenced: set[str]
    """Steps adopted by another process while this one ran them: their writes are dropped."""
    on_fenced: Callable[[str], None]
    """Stops a fenced Step's task without a terminal frame (the Step runner's ``fence``)."""

    def notify_run(self, run_id: str) -> None:
        raise NotImplementedError  # EventLog's

    def notify_remote(self, step_id: str, run_id: str) -> None:
        """A commit of ``step_id``'s frames happened in some process (the listener's
        callback, PG-9103): wake its readers here, unless the Step is live here (its own
        commits woke them already)."""
        if step_id in self._live:
            return
        for sub in self._remote.get(step_id, ()):
            sub.notify()
        self.notify_run(run_id)

    def wake_remote(self) -> None:
        """Wake every reader of a Step not live here (the listener (re)connected and may
        have missed commits, PG-9103)."""
        for subs in self._remote.values():
            for sub in subs:
                sub.notify()
        for run_id in list(self._run_subs):
            self.notify_run(run_id)

    def _commit(self, rows: list[EventRow],
                updates: list[StepUpdate]) -> list[EventRow]:
        """Commit a group; when the store refuses Steps this process no longer owns,
        fence them and commit the rest [PG-9108].

        Returns:
            The rows committed (``rows`` without those of fenced Steps).

        Raises:
            Exception: whatever else the store raised (nothing of the group committed).
        """
        while True:
            try:
                self.store.commit_events(rows, updates)
            except StepFenced as refused:
                gone = refused.step_ids
            else:
                return rows
            _log.error("steps %s were adopted by another process: fenced", sorted(gone))
            rows = [row for row in rows if row[0] not in gone]
            updates = [u for u in updates if u[0] not in gone]
            for step_id in sorted(gone):
                self.fence(step_id)

    def fence(self, step_id: str) -> None:
        """Give up a Step another process adopted: drop it from the live cache (its later
        writes are ignored), move its readers to the store's log, wake them, and stop its
        task (``on_fenced``) [PG-9108]."""
        self.fenced.add(step_id)
        self._pending = [row for row in self._pending if row[0] != step_id]
        self._pending_updates.pop(step_id, None)
        live: _LiveView | None = self._live.pop(step_id, None)
        if live is not None:
            if not live.done:
                self._active -= 1
            if live.subs:
                self._remote.setdefault(step_id, set()).update(live.subs)
            for sub in live.subs:
                sub.notify()
        self.on_fenced(step_id)

    def fence_disowned(self, disowned: Callable[[list[str]], list[str]]) -> int:
        """Fence at once every Step live here that another process owns now: this
        process just found its lease gone (PG-9110), so a Step that writes nothing for a
        while (waiting for an engine, a slot, a tool) is stopped now, not at its next
        write.

        Args:
            disowned: the store's answer to "which of these Steps are owned by another
                process" (:func:`orchestrator_core.cluster.disowned`).

        Returns:
            How many Steps were fenced.
        """
        live = [step_id for step_id, entry in self._live.items() if not entry.done]
        gone = sorted(disowned(live)) if live else []
        for step_id in gone:
            self.fence(step_id)
        return len(gone)
