"""Several orchestratord processes over one shared store: who owns a Step, who ends a
dead process's Steps, and how a reader here hears of a commit there (DESIGN.md §7;
PG-9100..PG-9104).

The machinery lives in the store (:mod:`orchestrator_core.store_pg_multi`); this module
drives it from the server's lifecycle and does nothing for a store that is not shared
(SQLite: one process, whose startup recovery stays :meth:`Store.unfinished_steps`).

* At startup :func:`unfinished` registers the process and adopts the orphans: Steps of
  dead processes, of none, and its own previous life's.
* :func:`keep_lease` renews the lease every ``store_heartbeat_ms``, adopts (and has the
  runner interrupt) the Steps of processes whose lease ran out, and keeps the one
  listening connection that wakes this process's readers of other processes' Steps.
* :func:`request_cancel` asks the process running a Step to cancel it; its listener
  hands the request to its runner (PG-9111).
* :func:`leave` removes the process at a clean shutdown.
"""

from __future__ import annotations

import logging
import pathlib
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

import anyio

from orchestrator_core.budgets import Ledger, LedgerView
from orchestrator_core.clock import Clock
from orchestrator_core.config import ServerConfig
from orchestrator_core.pools import SlotGate
from orchestrator_core.rows import StepRow
from orchestrator_core.store_base import Store

__all__ = ["SharedStore", "disowned", "keep_lease", "leave", "ledger_of", "node_of", "pause",
           "request_cancel", "slot_gate_of", "unfinished"]

_log = logging.getLogger("orchestratord.cluster")


@runtime_checkable
class SharedStore(Protocol):
    """A store several processes share (the PostgreSQL store) [PG-9100]."""

    process_id: str

    def join(self, lease_ms: int, node: str = "") -> None: ...

    def beat(self) -> bool: ...

    def leave(self) -> None: ...

    def adopt_orphans(self, *, startup: bool) -> list[StepRow]: ...

    async def listen(self, on_commit: Callable[[str, str], None],
                     on_connect: Callable[[], None],
                     pause: Callable[[float], Awaitable[None]],
                     on_control: Callable[[str, str], None] = ...) -> None: ...

    def request_cancel(self, step_id: str, reason: str) -> bool: ...

    def disowned(self, step_ids: list[str]) -> list[str]: ...

    def cancels_requested(self) -> list[tuple[str, str]]: ...

    def hold(self, run_id: str) -> AbstractContextManager[LedgerView]: ...

    def release(self, step_id: str) -> None: ...

    def take_slot(self, replica: str, slots: int) -> int | None: ...

    def give_slot(self, replica: str, slot: int) -> None: ...

    def slot_freed(self, replica: str) -> anyio.Event: ...


def unfinished(store: Store, config: ServerConfig, *, startup: bool) -> list[StepRow]:
    """The unfinished Steps this process must close as ``INTERRUPTED`` [PG-9102].

    Args:
        store: the server's store.
        config: ``store_lease_ms`` is the lease this process registers with.
        startup: the server is starting (no Step of its own runs yet).

    Returns:
        On a shared store: the Steps just adopted from dead processes (at startup also
        those of none and of this process's previous life), each now owned by this
        process. On SQLite: every ``queued``/``running`` Step at startup, none later.
    """
    if not isinstance(store, SharedStore):
        return store.unfinished_steps() if startup else []
    shared: SharedStore = store  # its own protocol, not the Store seam's
    if startup:
        shared.join(config.store_lease_ms, node_of(config))
    return shared.adopt_orphans(startup=startup)


async def pause(clock: Clock, seconds: float) -> None:
    """Wait ``seconds`` of the injected clock."""
    with clock.move_on_after(seconds):
        await anyio.Event().wait()


async def keep_lease(store: Store, config: ServerConfig, clock: Clock,
                     reap: Callable[[], int], on_commit: Callable[[str, str], None],
                     on_connect: Callable[[], None],
                     on_cancel: Callable[[str, str], object] = lambda _s, _r: None,
                     on_lost: Callable[[], object] = lambda: None) -> None:
    """Hold this process's lease and listen for other processes' commits, until
    cancelled [PG-9101, PG-9102, PG-9103, PG-9110, PG-9111]. Returns at once on a store
    not shared.

    Every ``store_heartbeat_ms`` (real time: the lease is the database's clock): one
    heartbeat, then ``reap()``, which adopts the Steps of processes whose lease ran out
    and closes them (:meth:`StepRunner.recover` with ``startup=False``). So a dead
    process's Steps end within its lease plus one heartbeat interval.

    Args:
        store: the server's store.
        config: ``store_heartbeat_ms``, ``store_lease_ms``.
        clock: the injected clock the intervals are waited on.
        reap: adopts and interrupts orphans; returns how many.
        on_commit: wakes the readers of ``(step_id, run_id)`` (``EventLog.notify_remote``).
        on_connect: wakes every remote reader (after the listener (re)connects).
        on_cancel: cancels a Step live here, ``(step_id, reason)``, as a local cancel
            does (``StepTasks.cancel_local``): another process asked (PG-9111). Also
            called, at every (re)connection, for each cancel recorded meanwhile.
        on_lost: called once this process registered again after finding its lease
            gone: fences the Steps live here that a survivor adopted (PG-9110).
    """
    if not isinstance(store, SharedStore):
        return
    shared: SharedStore = store
    interval = config.store_heartbeat_ms / 1000.0

    def connected() -> None:
        on_connect()
        for step_id, reason in shared.cancels_requested():
            on_cancel(step_id, reason)

    def control(verb: str, arg: str) -> None:
        if verb == "cancel":
            step_id, _, reason = arg.partition(" ")
            on_cancel(step_id, reason)

    async with anyio.create_task_group() as tg:
        tg.start_soon(shared.listen, on_commit, connected,
                      lambda s: pause(clock, s), control)
        while True:
            await pause(clock, interval)
            if not await anyio.to_thread.run_sync(shared.beat):
                _log.error("process %s lost its lease; its Steps were adopted, joining again",
                           shared.process_id)
                shared.join(config.store_lease_ms, node_of(config))
                on_lost()
            try:
                reaped = reap()
            except Exception:  # a reap that fails is tried again at the next beat
                _log.exception("adopting the Steps of dead processes failed")
                continue
            if reaped:
                _log.warning("interrupted %d Steps of dead processes", reaped)


def request_cancel(store: Store, step_id: str, reason: str) -> bool:
    """Ask the process that runs ``step_id`` to cancel it (PG-9111): on a shared store,
    records the request and notifies that process; False on SQLite (every Step runs
    here), or when the Step is finished or this process's own."""
    if not isinstance(store, SharedStore):
        return False
    shared: SharedStore = store
    return shared.request_cancel(step_id, reason)


def disowned(store: Store, step_ids: list[str]) -> list[str]:
    """Which of ``step_ids`` another process owns now (PG-9110); none on SQLite."""
    if not isinstance(store, SharedStore):
        return []
    shared: SharedStore = store
    return shared.disowned(step_ids)


def ledger_of(store: Store) -> Ledger | None:
    """The shared budget ledger of a shared store (PG-9106); None on SQLite."""
    return store if isinstance(store, SharedStore) else None


def slot_gate_of(store: Store) -> SlotGate | None:
    """The slots of shared remote replicas, counted across processes (PG-9107); None on
    SQLite."""
    return store if isinstance(store, SharedStore) else None


def node_of(config: ServerConfig) -> str:
    """This server's node: ``<host name>:<absolute data_dir>``, which one live process
    holds at a time (PG-9102)."""
    return f"{socket.gethostname()}:{pathlib.Path(config.data_dir).resolve()}"


def leave(store: Store) -> None:
    """Remove this process from a shared store (clean shutdown); nothing on SQLite."""
    if isinstance(store, SharedStore):
        shared: SharedStore = store
        shared.leave()
