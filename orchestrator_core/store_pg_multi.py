"""Several processes over one PostgreSQL schema: leases, orphan adoption, fencing, wake-ups
and control across processes (DESIGN.md §7; PG-9100..PG-9113).

:class:`PgStore <orchestrator_core.store_pg.PgStore>` mixes this in; the SQLite store has
none of it (one process owns its file), and :mod:`orchestrator_core.cluster` only drives
a store that has it.

* **Ownership.** Every connection of a store sets ``orchestratord.process`` to the
  store's :attr:`~PgBase.process_id`, and ``steps.owner`` defaults to it, so a Step is
  owned by the one process that inserted it, with no extra statement (PG-9100).
* **Lease.** A process is a row of ``processes`` with a heartbeat from the database's
  clock (``now()``) and its own lease. :meth:`PgCluster.beat` renews it with ONE
  ``UPDATE`` per interval, whatever the number of Steps the process runs (PG-9101).
* **Adoption, exactly once.** :meth:`PgCluster.adopt_orphans` takes a transaction-level
  advisory lock of the schema, deletes the rows of processes whose lease ran out (and, at
  startup, of this process's previous lives: the same ``node``), and
  moves every ``queued``/``running`` Step whose owner has no row (or none at all) to the
  caller in one ``UPDATE ... RETURNING``. Reapers are serialised by the lock, and the
  second one finds those Steps owned by a live process, so each orphan is adopted by one
  survivor; the adopter then closes them as ``INTERRUPTED`` (the runner's recovery). Why
  this and not ``SKIP LOCKED`` claims: see ``specs/99_postgresql_multi.md`` (PG-9102).
* **Wake-ups.** :meth:`PgCluster.notify_sql` is the statement the group commit runs in
  its transaction: one ``pg_notify`` per Step it wrote, payload ``"<step_id> <run_id>"``,
  delivered at COMMIT. :meth:`PgCluster.listen` is the one listening connection of a
  process; it hands each payload to a callback (PG-9103).
* **Fencing.** :meth:`PgCluster.fence` is the group commit's first statement: it locks
  the rows of the Steps written and refuses the commit (:class:`StepFenced`) when another
  process owns one, i.e. adopted it while this one was taken for dead (PG-9108).
* **Control.** A cancel asked of a process that does not run the Step is kept on it and
  notified to its owner (:meth:`PgCluster.request_cancel`, PG-9111); a Run's close and a
  shared slot's give-back are notified at their COMMIT too (PG-9113, PG-9107).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence

import anyio
import psycopg
from psycopg import sql

from orchestrator_core.fencing import StepFenced
from orchestrator_core.rows import StepRow
from orchestrator_core.store_pg_base import LOCK_RUN, STEPS, Conn, PgBase

__all__ = ["PgCluster"]

_REAP_LOCK = "SELECT pg_advisory_xact_lock(hashtext('orchestratord.reap.' || %s))"
_EXPIRE = ("DELETE FROM processes WHERE process_id <> %(me)s"
           " AND (heartbeat + lease_ms * interval '1 millisecond' < now()"
           " OR (%(startup)s AND node <> '' AND node ="
           " (SELECT node FROM processes WHERE process_id = %(me)s)))")
_ADOPT = ("UPDATE steps SET owner = %(me)s WHERE status IN ('queued', 'running')"
          " AND (owner IS NULL OR owner = %(mine)s OR NOT EXISTS"
          " (SELECT 1 FROM processes p WHERE p.process_id = steps.owner))"
          " RETURNING step_id")
_UNHELD = ("DELETE FROM reservations WHERE owner = %(mine)s OR NOT EXISTS"
           " (SELECT 1 FROM processes p WHERE p.process_id = reservations.owner)")
_UNSLOT = ("UPDATE replica_slots SET holder = NULL WHERE holder = %(mine)s OR (holder IS NOT"
           " NULL AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.process_id = holder))")
_SLOTS = ("INSERT INTO replica_slots (replica, slot) SELECT %(k)s, s FROM"
          " generate_series(0, %(n)s - 1) AS s ON CONFLICT DO NOTHING")
_TAKE = ("UPDATE replica_slots SET holder = %(me)s WHERE (replica, slot) ="
         " (SELECT replica, slot FROM replica_slots WHERE replica = %(k)s AND slot < %(n)s"
         " AND holder IS NULL ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING slot")
_FENCE = ("SELECT step_id, owner IS DISTINCT FROM %s FROM steps WHERE step_id = ANY(%s)"
          " ORDER BY step_id FOR NO KEY UPDATE")
"""Locks the rows of the Steps a commit writes (an adoption waits for the commit, or the
commit for the adoption, whose new owner it then reads) and tells which are not ours."""
_CANCEL = ("UPDATE steps SET cancel_requested = %(why)s WHERE step_id = %(id)s"
           " AND status IN ('queued', 'running') AND owner IS DISTINCT FROM %(me)s"
           " RETURNING step_id")
_CANCELS = ("SELECT step_id, cancel_requested FROM steps WHERE owner = %s"
            " AND cancel_requested IS NOT NULL AND status IN ('queued', 'running')"
            " ORDER BY rid")
_NOTE = "SELECT pg_notify(%s, %s)"
SLOT_KEY_MAX = 2000
"""Longest replica key whose give-back is notified (a notification holds < 8000 bytes);
a longer one's waiters find the slot at their fallback re-ask (PG-9107)."""
_SPENT = ("SELECT COALESCE(u.tokens_in, 0) + COALESCE(h.tokens_in, 0),"
          " COALESCE(u.tokens_out, 0) + COALESCE(h.tokens_out, 0),"
          " COALESCE(u.cost_usd, 0) + COALESCE(h.cost_usd, 0)"
          " FROM (SELECT 1) one"
          " LEFT JOIN run_usage u ON u.run_id = %(r)s"
          " LEFT JOIN (SELECT SUM(tokens_in) AS tokens_in, SUM(tokens_out) AS tokens_out,"
          " SUM(cost_usd) AS cost_usd FROM reservations WHERE run_id = %(r)s) h ON true")


class _Held:
    """One Run's ledger under its row lock (:class:`~orchestrator_core.budgets.LedgerView`)."""

    def __init__(self, conn: Conn, run_id: str, owner: str,
                 spent: tuple[float, float, float]) -> None:
        self._conn, self._run_id, self._owner = conn, run_id, owner
        self.spent = spent

    def add(self, step_id: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        self._conn.execute(
            "INSERT INTO reservations (step_id, run_id, owner, tokens_in, tokens_out,"
            " cost_usd) VALUES (%s, %s, %s, %s, %s, %s)",
            (step_id, self._run_id, self._owner, tokens_in, tokens_out, cost_usd))


class PgCluster(PgBase):
    """The multi-process part of the PostgreSQL store [PG-9100..PG-9103]."""

    shared = True
    """Other processes may write this store: a reader of a Step not live here waits for
    its terminal frame instead of ending at the last committed one (PG-9103)."""

    def __init__(self, dsn: str, *, schema: str, pool_size: int) -> None:
        super().__init__(dsn, schema=schema, pool_size=pool_size)
        self._slot_waits: dict[str, anyio.Event] = {}  # replica -> its waiters' event

    def join(self, lease_ms: int, node: str = "") -> None:
        """Register this process with a fresh heartbeat and its lease [PG-9101].

        Args:
            lease_ms: how long after its last heartbeat a survivor may declare this
                process dead and adopt its Steps (ms, > 0).
            node: what only one live process holds at a time (``host:data_dir``); a
                process starting with the same node is this one's next life and adopts
                its Steps at once (PG-9102). Empty: none.
        """
        self._exec("INSERT INTO processes (process_id, lease_ms, node) VALUES (%s, %s, %s)"
                   " ON CONFLICT (process_id) DO UPDATE SET heartbeat = now(),"
                   " lease_ms = EXCLUDED.lease_ms, node = EXCLUDED.node",
                   (self.process_id, lease_ms, node))

    def beat(self) -> bool:
        """Renew this process's lease: one ``UPDATE`` for all its Steps [PG-9101].

        Returns:
            False when the row is gone: a survivor declared this process dead (its lease
            ran out) and adopted its Steps.
        """
        return self._exec("UPDATE processes SET heartbeat = now() WHERE process_id = %s",
                          (self.process_id,)) == 1

    def leave(self) -> None:
        """Remove this process's row (a clean shutdown, after its last commit)."""
        self._exec("DELETE FROM processes WHERE process_id = %s", (self.process_id,))

    def adopt_orphans(self, *, startup: bool) -> list[StepRow]:
        """Take over every unfinished Step whose owner is dead, exactly once [PG-9102].

        Args:
            startup: also take this process's own unfinished Steps (a previous life of
                the same store object) and those of every other process registered with
                this one's node (a previous life of the same server, killed before its
                lease ran out): at startup none of them can be running.

        Returns:
            The adopted Steps (now owned by this process), in creation order; the
            caller closes each one as ``INTERRUPTED``.
        """
        with self._tx() as conn:
            conn.execute(_REAP_LOCK, (self.schema,))
            conn.execute(_EXPIRE, {"me": self.process_id, "startup": startup})
            conn.execute(_UNHELD, {"mine": self.process_id if startup else None})
            conn.execute(_UNSLOT, {"mine": self.process_id if startup else None})
            ids = [r[0] for r in conn.execute(_ADOPT, {
                "me": self.process_id, "mine": self.process_id if startup else None})]
            if not ids:
                return []
            rows = conn.execute(STEPS + " WHERE step_id = ANY(%s) ORDER BY rid", (ids,))
            return [StepRow(*values) for values in rows]

    @contextlib.contextmanager
    def hold(self, run_id: str) -> Iterator[_Held]:
        """The Run's ledger under its row lock, for one admission [PG-9106]: its stored
        usage plus every process's reservations, read after the lock, and the insert of
        this admission's reservation, committed together on exit (rolled back when the
        admission is refused)."""
        with self._tx() as conn:
            conn.execute(LOCK_RUN, (run_id,))
            row = conn.execute(_SPENT, {"r": run_id}).fetchone()
            assert row is not None  # one row, always
            yield _Held(conn, run_id, self.process_id,
                        (float(row[0]), float(row[1]), float(row[2])))

    def release(self, step_id: str) -> None:
        """Drop a Step's reservation (its usage is stored by now) [PG-9106]."""
        self._exec("DELETE FROM reservations WHERE step_id = %s", (step_id,))

    def take_slot(self, replica: str, slots: int) -> int | None:
        """Hold one of the ``slots`` slots every process shares on a remote replica, or
        None when all are held [PG-9107].

        Args:
            replica: the replica's shared key (its URL).
            slots: how many concurrent requests it takes.

        Returns:
            The slot held (give it back with :meth:`give_slot`), or None.
        """
        with self._tx() as conn:
            conn.execute(_SLOTS, {"k": replica, "n": slots})
            row = conn.execute(_TAKE, {"k": replica, "n": slots, "me": self.process_id}
                               ).fetchone()
        return None if row is None else int(row[0])

    def give_slot(self, replica: str, slot: int) -> None:
        """Give back a slot :meth:`take_slot` returned, and wake every process's waiters
        for one of that replica at COMMIT (``!slot <replica>``) [PG-9107]."""
        with self._tx() as conn:
            given = conn.execute("UPDATE replica_slots SET holder = NULL WHERE replica = %s"
                                 " AND slot = %s AND holder = %s",
                                 (replica, slot, self.process_id)).rowcount
            if given and len(replica) <= SLOT_KEY_MAX:
                conn.execute(_NOTE, (self.channel, "!slot " + replica))

    def slot_freed(self, replica: str) -> anyio.Event:
        """An event set when a slot of ``replica`` is given back by any process (the
        listener heard its notification); take it BEFORE asking for a slot, so a slot
        given back in between is not missed [PG-9107]. Event-loop thread only."""
        event = self._slot_waits.get(replica)
        if event is None:
            event = self._slot_waits[replica] = anyio.Event()
        return event

    def wake_slot(self, replica: str) -> None:
        """Set the waiters' event of ``replica`` (and start a new one) [PG-9107]."""
        event = self._slot_waits.pop(replica, None)
        if event is not None:
            event.set()

    def wake_all_slots(self) -> None:
        """Wake every slot waiter (the listener (re)connected: a give-back may be lost)."""
        for replica in list(self._slot_waits):
            self.wake_slot(replica)

    def request_cancel(self, step_id: str, reason: str) -> bool:
        """Ask the process that runs a Step to cancel it [PG-9111].

        In one transaction: keep ``reason`` on the Step (``cancel_requested``) if it is
        unfinished and owned by another process, and notify (``!cancel <step_id>
        <reason>``) at COMMIT; that process's listener hands it to its runner.

        Args:
            step_id: the Step (its tenant checked by the caller).
            reason: the cancel's message (a server text, not a request's).

        Returns:
            True when the request was recorded; False when the Step is finished, unknown
            or this process's own.
        """
        if "\x00" in step_id or "\x00" in reason:
            return False  # names no stored Step (PG-9008)
        with self._tx() as conn:
            if conn.execute(_CANCEL, {"id": step_id, "why": reason,
                                      "me": self.process_id}).fetchone() is None:
                return False
            conn.execute(_NOTE, (self.channel, f"!cancel {step_id} {reason}"))
            return True

    def cancels_requested(self) -> list[tuple[str, str]]:
        """``(step_id, reason)`` of this process's unfinished Steps whose cancel another
        process recorded, oldest first: read when the listener (re)connects, in case a
        notification was missed [PG-9111]."""
        return [(str(a), str(b)) for a, b in self._rows(_CANCELS, (self.process_id,))]

    def fence(self, cur: psycopg.Cursor[tuple[object, ...]], step_ids: set[str]) -> None:
        """Refuse a commit that writes a Step this process no longer owns [PG-9108].

        Run first in the committing transaction: it locks the rows of ``step_ids`` until
        COMMIT, so an adoption of one of them waits for this commit (and then finds it
        finished, or adopts it with this commit's frames in its log), and a commit made
        after an adoption reads the adopter as the owner. One round trip.

        Args:
            cur: a cursor of the committing transaction.
            step_ids: the Steps the commit writes frames or columns of.

        Raises:
            StepFenced: some of them are owned by another process (the transaction must
                roll back: nothing of the commit is written).
        """
        if not step_ids:
            return
        cur.execute(_FENCE, (self.process_id, sorted(step_ids)))
        fenced = frozenset(str(step) for step, other in cur.fetchall() if other)
        if fenced:
            raise StepFenced(fenced)

    def disowned(self, step_ids: list[str]) -> list[str]:
        """Which of ``step_ids`` another process owns now (it adopted them from this one
        while this one was taken for dead) [PG-9110]."""
        return [str(r[0]) for r in self._rows(
            "SELECT step_id FROM steps WHERE step_id = ANY(%s) AND owner IS DISTINCT FROM %s",
            (step_ids, self.process_id))]

    def notify_sql(self, steps: Sequence[tuple[str, str]]) -> tuple[str, tuple[object, ...]]:
        """The statement that wakes every process's readers of ``steps`` at COMMIT.

        Args:
            steps: ``(step_id, run_id)`` of each Step a commit wrote frames of.

        Returns:
            ``(query, params)`` to run in the committing transaction.
        """
        return ("SELECT pg_notify(%s, s) FROM unnest(%s::text[]) AS s",
                (self.channel, [f"{step} {run}" for step, run in steps]))

    async def listen(self, on_commit: Callable[[str, str], None],
                     on_connect: Callable[[], None],
                     pause: Callable[[float], Awaitable[None]],
                     on_control: Callable[[str, str], None] = lambda _v, _a: None) -> None:
        """Listen to this schema's commits until cancelled [PG-9103].

        One connection per process. Each commit's notification calls ``on_commit(step_id,
        run_id)`` on the event loop (a Run's close: an empty ``step_id``, PG-9113); a
        slot given back wakes that replica's waiters (:meth:`slot_freed`, PG-9107); any
        other control notification ``!<verb> <arg>`` calls ``on_control(verb, arg)``
        (``cancel``: ``arg`` is ``"<step_id> <reason>"``, PG-9111). After every
        (re)connection ``on_connect()`` runs and every slot waiter is woken, so whatever
        was committed while nobody listened is reread. A lost connection is retried
        after 0.5 s.

        Args:
            on_commit: called with the Step and Run of each commit.
            on_connect: called once listening (again).
            pause: waits that many seconds (the server's injected clock).
            on_control: called with a control notification's verb and argument.
        """
        conninfo = self._pool.conninfo
        assert isinstance(conninfo, str)  # PgBase gives the pool its DSN
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        conninfo, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(
                        sql.Identifier(self.channel)))
                    on_connect()
                    self.wake_all_slots()
                    async for note in conn.notifies():
                        head, _, rest = note.payload.partition(" ")
                        if head == "!slot":
                            self.wake_slot(rest)
                        elif head.startswith("!"):
                            on_control(head[1:], rest)
                        else:
                            on_commit(head, rest)
            except psycopg.OperationalError:
                await pause(0.5)
