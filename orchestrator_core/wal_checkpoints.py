"""WAL checkpoints off the event loop (DESIGN.md §1, STREAM-2000).

In WAL mode SQLite copies committed pages back into the database file in a *checkpoint*.
By default the connection that commits does it, inside the ``COMMIT`` that takes the log
past 1,000 pages, and a checkpoint syncs the disk twice: on these machines that is a
stall of several milliseconds on the event loop about once every hundred Steps, which is
the whole p99 of a Step's latency (``python -m tools.bench.overhead``: p99 about 5 ms with
the writer checkpointing, under 2 ms without).

:class:`WalCheckpointer` runs ``PRAGMA wal_checkpoint(PASSIVE)`` from its own thread and
its own connection every ``interval_s`` (real time, like the group-commit window: a
batching interval, not a timer of the domain). A passive checkpoint never blocks the
writer; a page rewritten many times within the interval is copied back once. The
writer's own automatic checkpoint stays as a backstop at :data:`BACKSTOP_PAGES`, in case
the thread falls behind. Durability does not change: a commit is durable (against a
process crash with ``synchronous=NORMAL``, a power loss with ``FULL``) when ``COMMIT``
returns, whoever checkpoints later.
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
import threading

__all__ = ["BACKSTOP_PAGES", "INTERVAL_S", "WalCheckpointer"]

log = logging.getLogger("orchestrator.store")

INTERVAL_S = 1.0
"""Seconds between two background checkpoints."""

BACKSTOP_PAGES = 10_000
"""``wal_autocheckpoint`` of the writer: it checkpoints itself only past this many pages
of log (about 40 MiB), that is when the background thread has not kept up."""


class WalCheckpointer:
    """A daemon thread that checkpoints one WAL database every ``interval_s``.

    Args:
        path: the database file (already in WAL mode).
        interval_s: seconds between checkpoints.
    """

    def __init__(self, path: pathlib.Path, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        """Passive checkpoints run so far (tests read it)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoints",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(self.interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as exc:  # the writer's backstop still checkpoints
                    log.warning("background WAL checkpoint failed: %s", exc)
        finally:
            conn.close()

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and wait for it (at most ``timeout_s``; a checkpoint in
        progress completes first)."""
        self._stop.set()
        self._thread.join(timeout_s)
