"""Fencing at the store and the event log: a process declared dead while it still ran
writes nothing more for the Steps a survivor adopted (PG-9108..PG-9110).

Each "process" is a PgStore of its own on one fresh schema, as in ``test_pg_multi.py``. The
real test (a server stopped with SIGSTOP past its lease, then SIGCONT) is
``test_harness/integration/test_pg_fencing_servers.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from orchestrator_core.clock import FakeClock
from orchestrator_core.eventlog import EventLog
from orchestrator_core.fencing import StepFenced
from orchestrator_core.metrics import Metrics
from orchestrator_core.rows import StepRow
from orchestrator_core.store_pg import PgStore

pytestmark = pytest.mark.own_stores  # builds its own PgStores; the PostgreSQL pass adds nothing





def _step(step_id: str) -> StepRow:
    return StepRow(step_id=step_id, run_id="r", type="llm_call", client_token="t" + step_id,
                   input="{}", input_hash="i", placement=None, status="running", seed=None,
                   created_at="t")


def _adopted(dead: PgStore, survivor: PgStore) -> list[str]:
    """Let ``dead``'s lease (100 ms) run out and have ``survivor`` adopt its Steps."""
    time.sleep(0.3)
    survivor.join(60_000)
    return [r.step_id for r in survivor.adopt_orphans(startup=False)]


class TestRefusedWrites:
    """The database refuses a commit of a Step the committing process no longer owns."""

    def test_a_commit_of_a_step_adopted_by_another_process_is_refused_and_writes_nothing(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9108] After B adopted A's running Step, A's next group commit of it raises
        ``StepFenced`` naming it, and neither its frame nor its columns are stored."""
        a, b = procs(2)
        a.join(100)
        a.insert_step(_step("sa"))
        a.commit_events([("sa", 0, "r", "started", b"{}")], [("sa", {"last_seq": 0})])
        adopted = _adopted(a, b)
        with pytest.raises(StepFenced) as refused:
            a.commit_events([("sa", 1, "r", "token", b"{}")],
                            [("sa", {"last_seq": 1, "status": "succeeded"})])
        assert (adopted, refused.value.step_ids, [r[0] for r in a.read_events("sa", -1)],
                a._rows("SELECT status, last_seq, owner = %s FROM steps WHERE step_id = 'sa'",
                        (b.process_id,))) == (
            ["s", "sa"], frozenset({"sa"}), [0], [("running", 0, True)])

    def test_a_commit_mixing_an_owned_step_and_a_fenced_one_writes_neither(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9108] The refusal is the whole transaction: a Step A still owns (inserted
        after it registered again) gets nothing from the refused commit either."""
        a, b = procs(2)
        a.join(100)
        a.insert_step(_step("old"))
        _adopted(a, b)
        a.join(60_000)
        a.insert_step(_step("new"))
        with pytest.raises(StepFenced) as refused:
            a.commit_events([("new", 0, "r", "started", b"{}"), ("old", 0, "r", "token", b"{}")],
                            [("new", {"last_seq": 0}), ("old", {"last_seq": 0})])
        a.commit_events([("new", 0, "r", "started", b"{}")], [("new", {"last_seq": 0})])
        assert (refused.value.step_ids, a.read_events("old", -1),
                [r[0] for r in a.read_events("new", -1)]) == (frozenset({"old"}), [], [0])

    def test_an_adoption_waits_for_a_commit_in_flight_and_finds_its_frames(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9108] The check locks the Step's row until COMMIT: a survivor adopting it
        meanwhile waits, then adopts it with the commit's frame in its log (the
        ``INTERRUPTED`` it writes goes after it)."""
        a, b = procs(2)
        a.join(100)
        a.insert_step(_step("sa"))
        time.sleep(0.3)
        b.join(60_000)
        got: list[list[str]] = []
        with a._tx() as conn:
            cur = conn.cursor()
            a.fence(cur, {"sa"})
            cur.execute("INSERT INTO events (step_id, seq, run_id, type, data)"
                        " VALUES ('sa', 0, 'r', 'started', '{}')")
            adopting = threading.Thread(
                target=lambda: got.append([r.step_id for r in b.adopt_orphans(startup=False)]))
            adopting.start()
            adopting.join(0.5)
            waited = adopting.is_alive()
        adopting.join(10)
        assert (waited, got, b.max_seq("sa")) == (True, [["s", "sa"]], 0)


class TestFencedEventLog:
    """The event log drops a fenced Step's writes and hands its readers to the store."""

    def test_a_group_commit_fences_the_adopted_step_and_commits_the_rest(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9109] A group commit holding frames of an adopted Step and of an owned one
        stores the owned one's, calls ``on_fenced`` with the adopted Step, which is no
        longer live; its reader is woken and reads the adopter's frames from the store,
        complete at the adopter's terminal frame; its later writes are dropped."""
        a, b = procs(2)
        a.join(100)
        a.insert_step(_step("old"))
        log = EventLog(a, FakeClock(), Metrics(CollectorRegistry()))
        fenced: list[str] = []
        log.on_fenced = fenced.append
        log.open("old", "r")
        log.append_recorded("old", "started", b"{}")
        log.flush()
        sub = log.subscribe("old")
        _adopted(a, b)
        a.join(60_000)
        a.insert_step(_step("new"))
        log.open("new", "r")
        log.append_recorded("new", "started", b"{}")
        log.append_recorded("old", "token", b"{}")
        sub._woken = False
        log.flush()
        woken, live = sub._woken, log.is_live("old")
        b.commit_events([("old", 1, "r", "error", b"{}")],
                        [("old", {"last_seq": 1, "status": "interrupted"})])
        later = (log.append_recorded("old", "token", b"{}"),
                 log.finish_recorded("old", "end", b"{}", {"status": "succeeded"}))
        log.flush()
        read = log.read("old", -1)
        log.unsubscribe(sub)
        assert (fenced, woken, live, later, [r[1] for r in a.read_events("old", -1)],
                len(read[0]), read[1], [r[0] for r in a.read_events("new", -1)],
                log.active()) == (
            ["old"], True, False, (-1, -1), ["started", "error"], 2, True, [0], 1)

    def test_a_lost_lease_fences_at_once_the_adopted_steps_that_write_nothing(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9110] When A finds its lease gone, ``fence_disowned`` stops every Step live
        in A that a survivor owns now, before it writes again, and drops what it had
        pending; a Step A still owns stays live."""
        a, b = procs(2)
        a.join(100)
        a.insert_step(_step("old"))
        log = EventLog(a, FakeClock(), Metrics(CollectorRegistry()))
        fenced: list[str] = []
        log.on_fenced = fenced.append
        log.open("old", "r")
        log.append_recorded("old", "started", b"{}")
        _adopted(a, b)
        a.join(60_000)
        a.insert_step(_step("new"))
        log.open("new", "r")
        count = log.fence_disowned(a.disowned)
        log.flush()
        assert (count, fenced, log.is_live("old"), log.is_live("new"),
                a.read_events("old", -1)) == (1, ["old"], False, True, [])
