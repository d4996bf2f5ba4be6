"""Several processes over one PostgreSQL schema, at the store (PG-9100..PG-9104).

Each "process" here is a PgStore of its own on one schema: its own pool, its own
``process_id``, as a separate ``orchestratord serve`` has. The real multi-process test (three
servers, kill -9) is ``test_harness/integration/test_pg_multi_servers.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import pytest
from prometheus_client import CollectorRegistry

from contracts.errors import InvalidParams
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import ServerConfig, mock_config
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.rows import StepRow
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_pg import PgStore
from test_harness.unit.conftest import seeded

pytestmark = pytest.mark.own_stores  # builds its own PgStores; the PostgreSQL pass adds nothing





def _step(step_id: str, token: str, status: str = "running") -> StepRow:
    return StepRow(step_id=step_id, run_id="r", type="llm_call", client_token=token,
                   input="{}", input_hash="i", placement=None, status=status, seed=None,
                   created_at="t")


def _owners(store: PgStore) -> dict[str, str | None]:
    return dict(store._rows("SELECT step_id, owner FROM steps ORDER BY step_id"))


class TestOwnership:
    """A Step is owned by the one process that inserted it."""

    def test_a_step_is_owned_by_the_process_whose_store_inserted_it(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9100] Each store's Steps carry its own process id in ``steps.owner``, with
        no extra statement: the connection's setting is the column's default."""
        a, b = procs(2)
        a.insert_step(_step("sa", "ta"))
        b.insert_step(_step("sb", "tb"))
        assert _owners(a) == {"s": a.process_id, "sa": a.process_id, "sb": b.process_id}

    def test_a_heartbeat_is_one_update_of_the_process_row_and_touches_no_step(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9101] A heartbeat moves the process's ``heartbeat`` (the database's clock)
        and rewrites no Step row, however many the process owns."""
        (a,) = procs(1)
        for i in range(20):
            a.insert_step(_step(f"s{i}", f"t{i}"))
        a.join(3000)
        before = a._rows("SELECT step_id, xmin::text FROM steps ORDER BY step_id")
        beat0 = a._first("SELECT heartbeat FROM processes")
        time.sleep(0.01)
        assert a.beat() is True
        after = a._rows("SELECT step_id, xmin::text FROM steps ORDER BY step_id")
        beat1 = a._first("SELECT heartbeat FROM processes")
        assert (after == before, beat0 is not None and beat1 is not None and beat1 > beat0) == (
            True, True)


class TestAdoption:
    """A dead process's unfinished Steps are adopted by exactly one survivor."""

    def test_nothing_is_adopted_while_the_owner_beats_within_its_lease(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9102] A process whose lease has not run out keeps its Steps."""
        a, b = procs(2)
        a.join(60_000)
        b.join(60_000)
        a.insert_step(_step("sa", "ta"))
        assert (b.adopt_orphans(startup=False), _owners(b)["sa"]) == ([], a.process_id)

    def test_racing_survivors_adopt_each_orphan_exactly_once_after_the_lease(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9102] When the owner stops beating, four survivors adopting at once share
        its queued and running Steps with no Step taken twice; a finished Step stays; the
        dead process's row is gone and its heartbeat then answers False."""
        a, *survivors = procs(5)
        a.join(100)
        for s in survivors:
            s.join(60_000)
        for i, status in enumerate(("running", "queued", "running", "succeeded")):
            a.insert_step(_step(f"sa{i}", f"ta{i}", status))
        time.sleep(0.3)
        got: dict[str, list[str]] = {}
        gate = threading.Barrier(len(survivors))

        def adopt(s: PgStore) -> None:
            gate.wait()
            got[s.process_id] = [r.step_id for r in s.adopt_orphans(startup=False)]

        threads = [threading.Thread(target=adopt, args=(s,)) for s in survivors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        adopted = sorted(x for ids in got.values() for x in ids)
        owners = _owners(a)
        assert (adopted, len({owners[x] for x in adopted}), owners["sa3"],
                a._rows("SELECT count(*) FROM processes WHERE process_id = %s",
                        (a.process_id,)), a.beat()) == (
            ["s", "sa0", "sa1", "sa2"], 1, a.process_id, [(0,)], False)

    def test_at_startup_a_process_adopts_steps_of_its_previous_life_and_of_no_one(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9102] A Step with no owner (stored before v7) is an orphan; ``startup=True``
        also takes the store's own unfinished Steps (none can run yet), the one it just
        adopted included, while a periodic reap leaves them."""
        (a,) = procs(1)
        a.join(60_000)
        a.insert_step(_step("mine", "tm"))
        a._exec("UPDATE steps SET owner = NULL WHERE step_id = 's'")
        assert ([r.step_id for r in a.adopt_orphans(startup=False)],
                [r.step_id for r in a.adopt_orphans(startup=False)],
                [r.step_id for r in a.adopt_orphans(startup=True)]) == (
            ["s"], [], ["s", "mine"])


    def test_a_restart_on_the_same_node_adopts_its_previous_life_at_once(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9102] A process starting with the node (``host:data_dir``) of one killed
        before its lease ran out adopts that one's Steps at startup; a process of another
        node waits for the lease."""
        old, other, new = procs(3)
        old.join(60_000, "h:/srv/a")
        other.join(60_000, "h:/srv/b")
        new.join(60_000, "h:/srv/a")
        old.insert_step(_step("sa", "ta"))
        assert ([r.step_id for r in other.adopt_orphans(startup=True)],
                [r.step_id for r in new.adopt_orphans(startup=True)],
                _owners(new)["sa"] == new.process_id) == ([], ["s", "sa"], True)


class TestWakeUps:
    """A commit in one process wakes the readers of another."""

    def test_a_commit_notifies_the_listener_of_another_process_with_its_step_and_run(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9103] B's one listening connection hears ``(step_id, run_id)`` of every
        group commit A makes, once per Step per commit, after B is connected."""
        a, b = procs(2)

        async def main() -> list[tuple[str, str]]:
            heard: list[tuple[str, str]] = []
            ready = asyncio.Event()
            task = asyncio.create_task(b.listen(lambda s, r: heard.append((s, r)), ready.set,
                                                asyncio.sleep))
            await asyncio.wait_for(ready.wait(), 10)
            a.commit_events([("s", 0, "r", "started", b"{}"), ("s", 1, "r", "token", b"{}")],
                            [("s", {"status": "running"})])
            for _ in range(200):
                if heard:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            return heard

        assert asyncio.run(main()) == [("s", "r")]

    def test_a_reader_of_a_step_live_elsewhere_waits_for_its_terminal_frame(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9103] On a shared store, a Step not live in this process is complete only
        once its terminal frame is committed; on SQLite the store's log is complete."""
        a, b = procs(2)
        log = EventLog(b, FakeClock(), Metrics(CollectorRegistry()))
        a.commit_events([("s", 0, "r", "started", b"{}")], [("s", {"status": "running"})])
        first = log.read("s", -1)
        a.commit_events([("s", 1, "r", "end", b"{}")], [("s", {"status": "succeeded"})])
        second = log.read("s", 0)
        third = log.read("s", 1)
        assert ([len(first[0]), first[1]], [len(second[0]), second[1]],
                [len(third[0]), third[1]]) == ([1, False], [1, True], [0, True])

    def test_a_notification_wakes_only_subscribers_of_steps_not_live_here(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9103] :meth:`EventLog.notify_remote` wakes a reader of a Step another
        process runs; the readers of a local Step are woken by the local commit only."""
        (a,) = procs(1)
        log = EventLog(a, FakeClock(), Metrics(CollectorRegistry()))
        log.open("local", "r")
        remote, local = log.subscribe("s"), log.subscribe("local")
        log.notify_remote("s", "r")
        log.notify_remote("local", "r")
        woken = (remote._woken, local._woken)
        log.unsubscribe(remote)
        log.unsubscribe(local)
        assert woken == (True, False)


class TestSharedLedger:
    """Budget reservations are rows every process reads under the Run's row lock."""

    def test_a_reservation_held_by_one_process_counts_in_another_until_released(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9106] B's view of the Run's spending includes A's reservation, as soon as
        A's admission committed, and not after A released it."""
        a, b = procs(2)
        with a.hold("r") as view:
            before = view.spent
            view.add("sa", 5, 30, 0.25)
        with b.hold("r") as view:
            seen = view.spent
        a.release("sa")
        with b.hold("r") as view:
            after = view.spent
        assert (before, seen, after) == ((0.0, 0.0, 0.0), (5.0, 30.0, 0.25), (0.0, 0.0, 0.0))

    def test_a_refused_admission_holds_nothing(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9106] An admission refused inside the lock rolls its reservation back."""
        (a,) = procs(1)

        def refused() -> None:
            with a.hold("r") as view:
                view.add("sa", 5, 30, 0.25)
                raise RuntimeError("refused")

        with pytest.raises(RuntimeError):
            refused()
        with a.hold("r") as view:
            assert view.spent == (0.0, 0.0, 0.0)

    def test_a_dead_process_reservations_are_dropped_when_its_steps_are_adopted(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9106] Once a survivor adopts a dead process's Steps, the reservations it
        held no longer count against the Run."""
        a, b = procs(2)
        a.join(100)
        b.join(60_000)
        with a.hold("r") as view:
            view.add("s", 0, 40, 0.0)
        time.sleep(0.3)
        b.adopt_orphans(startup=False)
        with b.hold("r") as view:
            assert view.spent == (0.0, 0.0, 0.0)


class TestSharedSlots:
    """A remote replica's slots are rows every process claims."""

    def test_the_slots_of_a_replica_are_shared_by_every_process(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9107] Two processes get the replica's 2 slots between them, a third ask
        gets none until one is given back; another replica's slots are its own."""
        a, b = procs(2)
        first, second, third = (a.take_slot("http://r1", 2), b.take_slot("http://r1", 2),
                                a.take_slot("http://r1", 2))
        other = b.take_slot("http://r2", 2)
        a.give_slot("http://r1", 0)
        again = b.take_slot("http://r1", 2)
        assert (first, second, third, other, again) == (0, 1, None, 0, 0)

    def test_a_dead_process_slots_are_freed_when_its_steps_are_adopted(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9107] A slot held by a process whose lease ran out is free again once a
        survivor has reaped it."""
        a, b = procs(2)
        a.join(100)
        b.join(60_000)
        held = a.take_slot("http://r1", 1)
        time.sleep(0.3)
        before = b.take_slot("http://r1", 1)
        b.adopt_orphans(startup=False)
        assert (held, before, b.take_slot("http://r1", 1)) == (0, None, 0)


class TestIdempotencyAcrossProcesses:
    """``client_token`` is one Step whatever process takes it."""

    def test_two_processes_racing_one_client_token_store_one_step(
            self, procs: Callable[[int], list[PgStore]]) -> None:
        """[PG-9104] Two stores inserting the same ``(run, client_token, attempt)`` at the
        same moment: one inserts, the other inserts nothing and reads the winner."""
        a, b = procs(2)
        gate = threading.Barrier(2)
        won: dict[str, bool] = {}

        def insert(s: PgStore, step_id: str) -> None:
            gate.wait()
            won[step_id] = s.insert_step(_step(step_id, "same"))

        threads = [threading.Thread(target=insert, args=(s, i)) for s, i in ((a, "x"), (b, "y"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winner = a.get_step_by_token("r", "same")
        assert winner is not None
        assert (sorted(won.values()), won[winner.step_id],
                a._rows("SELECT count(*) FROM steps WHERE client_token = 'same'")) == (
            [False, True], True, [(1,)])


def test_sqlite_has_no_shared_machinery(tmp_path: object) -> None:
    """[PG-9100] The SQLite store is not shared: its event log reads a stored log as
    complete and keeps no remote readers."""
    import pathlib

    store = seeded(SqliteStore(pathlib.Path(str(tmp_path)) / "o.db"))
    log = EventLog(store, FakeClock(), Metrics(CollectorRegistry()))
    sub = log.subscribe("s")
    try:
        assert (getattr(store, "shared", False), log.read("s", -1),
                log._remote) == (False, ([], True), {})
    finally:
        log.unsubscribe(sub)
        store.close()



class TestLeaseConfig:
    """The heartbeat and the lease are operator settings."""

    @pytest.mark.parametrize(("heartbeat", "lease", "field"), [
        (1000, 1000, "store_lease_ms"), (1000, 500, "store_lease_ms"),
        (0, 3000, "store_heartbeat_ms")])
    def test_a_lease_not_longer_than_the_heartbeat_is_refused_naming_its_key(
            self, heartbeat: int, lease: int, field: str) -> None:
        """[PG-9101] A heartbeat interval that is not positive, or a lease not longer than
        it, is refused when the config is read, naming the key."""
        with pytest.raises(InvalidParams) as err:
            mock_config(store_heartbeat_ms=heartbeat, store_lease_ms=lease)
        assert err.value.data == {"field": field}

    def test_the_defaults_beat_every_second_and_lease_three(self) -> None:
        """[PG-9101] By default a process beats every 1000 ms and is dead 3000 ms after its
        last heartbeat."""
        cfg = mock_config()
        assert (cfg.store_heartbeat_ms, cfg.store_lease_ms) == (1000, 3000)


class _Gate:
    """A slot gate that records what it was asked (stands in for the shared store)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def take_slot(self, replica: str, slots: int) -> int | None:
        self.calls.append(("take", replica))
        return 0

    def give_slot(self, replica: str, slot: int) -> None:
        self.calls.append(("give", replica))

    def slot_freed(self, replica: str) -> anyio.Event:
        return anyio.Event()


def test_a_provisioned_remote_replica_counts_its_slots_across_processes(
        mock_cfg: ServerConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """[PG-9107] A replica added by ``POST /v1/pools/provision`` takes and gives back a
    shared slot under its own URL for each request, as a configured one does."""
    from orchestrator_core import cluster
    from test_harness.fake_llama import engine_servers
    from test_harness.support import app_client, llm_step

    gate = _Gate()
    monkeypatch.setattr(cluster, "slot_gate_of", lambda store: gate)
    with engine_servers() as start:
        url, _ = start()
        second, _ = start()
        cfg = _remote_config(mock_cfg, url)
        with app_client(cfg) as client:
            client.post("/v1/pools/provision", json={
                "url": second + "/", "pool_id": "remote-new", "dialect": "llama-server",
                "model": {"id": "remote:fake", "context_tokens": 4096},
                "expect_model": "/models/fake.gguf"})
            flow = client.post("/v1/flows", json={"ast_ir": {"gate": 1}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1}).json()[
                "run_id"]
            body = llm_step("g1", model="remote:fake", max_tokens=2)
            body["placement"] = {"strategy": "pin", "pool_id": "remote-new",
                                 "replica_id": "remote-new/r0"}
            step = client.post(f"/v1/runs/{run_id}/steps", json=body).json()
            with client.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
                b"".join(s.iter_bytes())
    assert gate.calls == [("take", second), ("give", second)]


def _remote_config(mock_cfg: ServerConfig, url: str) -> ServerConfig:
    import msgspec

    from orchestrator_core.config import ModelConfig, PoolConfig
    from orchestrator_core.provision_policy import ProvisioningConfig

    pool = PoolConfig(pool_id="remote-0", engine="openai_http", urls=[url],
                      models=[ModelConfig(id="remote:fake", context_tokens=4096)],
                      options={"dialect": "llama-server"})
    prov = ProvisioningConfig(enabled=True, operator_tenants=["default"])
    return msgspec.structs.replace(mock_cfg, pools=[*mock_cfg.pools, pool], provisioning=prov)
