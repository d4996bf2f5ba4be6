"""The store contract on both backends, and PostgreSQL's own guarantees (PG-9000).

:class:`TestBothBackends` runs each test on a SQLite store and on a PgStore (PG-9041);
the other classes test what only PostgreSQL has: its migrations, several stores over one
database at once, exact text and the orchestrator on an injected PgStore. The cluster and
the ``pg`` fixture are ``test_store_pg``'s.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import cast

import anyio
import msgspec
import psycopg
import pytest

from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import StepStatus, StepSubmit
from orchestrator_core import pg_migrations
from orchestrator_core.config import mock_config
from orchestrator_core.pg_migrations import PG_MIGRATIONS, PG_SCHEMA_VERSION, PgMigration
from orchestrator_core.rows import CheckpointRow, FactRow, FlowRow, LlmJobRow, StepRow
from orchestrator_core.service import Orchestrator
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store
from orchestrator_core.store_pg import PgStore
from test_harness import pg_inject
from test_harness.support import llm_step
from test_harness.unit import test_store_pg
from test_harness.unit.conftest import RUN, seeded
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

pg = test_store_pg.pg
_pg_seeded = test_store_pg._pg_seeded
# -- the same behaviour on each backend --------------------------------------------------

_STEP = StepRow(step_id="s", run_id="r", type="llm_call", client_token="c", input="{}",
                input_hash="i", placement=None, status="queued", seed=None, created_at="t")
_FACT = FactRow(fact_id="f0", run_id="r", flow_id="f", seq=0, type="t", schema_uri="u",
                data="{}", emitted_by_step=None, ts="t")
_CKP = CheckpointRow(checkpoint_id="k0", run_id="r", step_id=None, hash="h", snapshot="{}",
                     cursor="{}", ts="t")


@pytest.fixture(params=["sqlite", "pg"])
def either(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    """The seeded store on each backend."""
    if request.param == "sqlite":
        s = seeded(SqliteStore(tmp_path / "o.db"))
        yield s
        s.close()
        return
    yield _pg_seeded(request.getfixturevalue("pg"))


class TestBothBackends:
    """Facts, checkpoints, usage, tenancy, idempotency and imports answer alike (PG-9000,
    PG-9041)."""

    def test_usage_counters_follow_every_step_change(self, either: Store) -> None:
        """[PG-9006] Inserts, usage changes and status moves are counted in the same
        commit; the counters equal a recount and the crash checks find nothing."""
        either.insert_step(msgspec.structs.replace(_STEP, step_id="t", client_token="d",
                                                   status="running"))
        either.commit_events([("s", 0, "r", "end", b"{}")], [("s", {
            "status": "succeeded", "tokens_in": 3, "tokens_out": 4, "cost_usd": 0.25,
            "wall_ms": 9, "last_seq": 0})])
        either.commit_events([], [("t", {"status": "failed", "tokens_in": 1})])
        assert either.run_usage("r") == either.recount_usage("r") == msgspec.convert(  # type: ignore[attr-defined]
            {"tokens_in": 4, "tokens_out": 4, "cost_usd": 0.25, "wall_ms": 9,
             "counts": {"failed": 1, "succeeded": 1}}, type(either.run_usage("r")))
        assert either.integrity() == {  # type: ignore[attr-defined]
            "seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0, "broken_references": 0,
            "usage_mismatch": 0}

    def test_the_exact_match_cache_finds_only_succeeded_steps_of_the_tenant(
            self, either: Store) -> None:
        """[PG-9009] ``cached_step`` answers the earliest succeeded Step with the key in
        the caller's tenant; a running Step with the key and another tenant find nothing."""
        either.insert_step(msgspec.structs.replace(_STEP, step_id="c1", client_token="c1",
                                                   status="running", cache_key="b3:k"))
        assert either.cached_step("default", "b3:k") is None
        either.commit_events([("c1", 0, "r", "end", b"{}")], [("c1", {
            "status": "succeeded", "last_seq": 0})])
        found = either.cached_step("default", "b3:k")
        assert (found.step_id if found else None, either.cached_step("other", "b3:k"),
                either.cached_step("default", "b3:x")) == ("c1", None, None)

    def test_facts_number_from_zero_and_filter(self, either: Store) -> None:
        """[PG-9004] Facts of a Run take seqs 0, 1, 2 whatever seq they carry; filters
        combine; a Fact of an unknown Run is an integrity error."""
        seqs = [either.append_fact(msgspec.structs.replace(_FACT, fact_id=f"f{i}", seq=7,
                                                           type="ab"[i % 2],
                                                           emitted_by_step="s" if i else None))
                for i in range(3)]
        assert (seqs, either.facts_high_water("r")) == ([0, 1, 2], 2)
        assert [f.fact_id for f in either.list_facts(run_id="r", fact_type="a")] == ["f0", "f2"]
        assert [f.fact_id for f in either.list_facts(step_id="s", since_seq=1)] == ["f2"]
        assert [f.fact_id for f in either.list_facts(fact_ids=["f1", "x"])] == ["f1"]
        assert [f.fact_id for f in either.list_flow_facts("f", fact_type="b")] == ["f1"]
        position = either.fact_position("f", "f0")
        assert position is not None
        assert [f.fact_id for f in either.list_flow_facts("f", after=position, limit=1)] == ["f1"]
        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
            either.append_fact(msgspec.structs.replace(_FACT, fact_id="g", run_id="nope"))
        assert either.facts_high_water("nope") == -1

    def test_checkpoints_are_content_addressed_and_page_in_order(self, either: Store) -> None:
        """[PG-9009] A checkpoint id is stored once; pages follow creation order."""
        assert [either.insert_checkpoint(msgspec.structs.replace(_CKP, checkpoint_id=k))
                for k in ("k0", "k1", "k0", "k2")] == [True, True, False, True]
        after = either.checkpoint_position("r", "k0")
        assert after is not None
        assert [c.checkpoint_id for c in either.list_checkpoints("r", after, 1)] == ["k1"]
        assert [c.checkpoint_id for c in either.list_checkpoints("r")] == ["k0", "k1", "k2"]
        assert (either.checkpoint_position("other", "k0"), either.get_checkpoint("k9")) == (
            None, None)

    def test_a_flow_hash_is_unique_per_tenant(self, either: Store) -> None:
        """[PG-9009] Two tenants keep one hash each; one tenant's second is refused; each
        finds only its own."""
        flow = FlowRow(flow_id="g", hash="h", ast_ir="{}", tools="[]", config="{}",
                       labels=None, created_at="t", tenant="b")
        assert [either.insert_flow(flow),
                either.insert_flow(msgspec.structs.replace(flow, flow_id="g2"))] == [True, False]
        found = (either.get_flow_by_hash("b", "h"), either.get_flow_by_hash("default", "h"),
                 either.get_flow_by_hash("c", "h"))
        assert [f.flow_id if f else None for f in found] == ["g", "f", None]
        assert (either.flow_position("a", "g"), either.tenant_run_position("b", "r")) == (
            None, None)

    def test_a_failed_import_leaves_nothing(self, either: Store) -> None:
        """[PG-9020] An import whose second Step repeats a token stores no row at all; a
        good one stores its Run, Steps with ordinals, frames, Facts and checkpoints."""
        run = msgspec.structs.replace(RUN, run_id="imp", body='{"labels":{"k":"v"}}')
        step = msgspec.structs.replace(_STEP, step_id="i0", run_id="imp",
                                       status="succeeded", last_seq=1)
        events = [("i0", 0, "imp", "token", b"a"), ("i0", 1, "imp", "end", b"b")]
        fact = msgspec.structs.replace(_FACT, fact_id="fi", run_id="imp")
        ckp = msgspec.structs.replace(_CKP, checkpoint_id="ki", run_id="imp")

        def load(steps: list[StepRow]) -> None:
            either.import_run(flow=None, run=run, steps=steps, events=events, facts=[fact],
                              checkpoints=[ckp], engine_builds=[("fp", "{}")])

        with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError), match="twice"):
            load([step, msgspec.structs.replace(step, step_id="i1")])
        assert (either.get_run("imp"), either.get_step("i0"), either.engine_build("fp")) == (
            None, None, None)
        load([step])
        assert [(s.step_id, s.ordinal) for s in either.list_steps("imp")] == [("i0", 0)]
        assert either.read_events("i0", -1) == [(0, "token", b"a"), (1, "end", b"b")]
        assert (either.run_log_end("imp"), either.engine_build("fp")) == (2, "{}")
        assert [r.run_id for r in either.list_tenant_runs("default", label=("k", "v"))] == [
            "imp"]

    def test_a_prompt_with_nul_keeps_its_exact_characters(self, either: Store) -> None:
        """[PG-9008] A rendered prompt holding U+0000 reads back exactly; the first
        writer of a hash wins."""
        either.record_prompt_text("b3:p", "a\x00b\u00e9")
        either.record_prompt_text("b3:p", "other")
        assert (either.prompt_text("b3:p"), either.prompt_text("b3:q")) == (
            "a\x00b\u00e9", None)

    def test_a_key_holding_nul_answers_as_an_unknown_key(self, either: Store) -> None:
        """[PG-9008] Lookups by an id, token or hash holding U+0000 (which no stored row
        can have on PostgreSQL) answer None or nothing, as for any unknown key."""
        assert (either.get_run("r\x00"), either.get_step("s\x00"), either.get_flow("f\x00"),
                either.get_flow_by_hash("default\x00", "h"),
                either.get_step_by_token("r", "c\x00"), either.get_checkpoint("k\x00"),
                either.prompt_text("b3:\x00"), either.get_llm_job("s\x00"),
                either.tenant_run_position("default", "r\x00")) == (None,) * 9
        assert (either.read_events("s\x00", -1), either.list_steps("r\x00"),
                either.list_facts(fact_ids=["f\x00"]), either.list_runs("f\x00"),
                either.live_steps("r\x00"), either.run_log_page("r\x00", -1, 10)) == ([],) * 6
        assert (either.max_seq("s\x00"), either.run_log_end("r\x00"),
                either.steps_high_water("r\x00")) == (-1, 0, -1)

    def test_served_steps_take_the_first_hash(self, either: Store) -> None:
        """[PG-9005] A Step served by reference keeps its hash on the holder (first
        writer wins); another hash is refused and inserts nothing."""
        either.commit_events([("s", 0, "r", "end", b"{}")],
                             [("s", {"status": "succeeded", "last_seq": 0})])
        copy = msgspec.structs.replace(_STEP, step_id="c1", client_token="c1",
                                       status="succeeded", last_seq=0, frames_of="s",
                                       frames_hash="b3:x")
        assert either.insert_served(copy, "s") == (True, "b3:x")
        assert either.insert_served(msgspec.structs.replace(
            copy, step_id="c2", client_token="c2", frames_hash="b3:y"), "s") == (False, "b3:x")
        assert (either.read_events("c1", -1), either.max_seq("c1"), either.get_step("c2")) == (
            [(0, "end", b"{}")], 0, None)

    def test_llm_jobs_keep_attachments_once_per_tenant(self, either: Store) -> None:
        """[PG-9020] A job and its attachments are one write; a second job of the Step
        changes nothing; attachments are the tenant's only."""
        job = LlmJobRow(step_id="s", tenant="default", run_id="r", model="m",
                        enqueued_at="t", job_hash="b3:j", metadata=None, attachments="[]")
        assert either.insert_llm_job(job, [("ab", b"\x00bytes")])
        assert not either.insert_llm_job(msgspec.structs.replace(job, model="n"),
                                         [("cd", b"x")])
        assert (either.get_llm_job("s"), either.get_attachment("default", "ab"),
                either.get_attachment("other", "ab"), either.get_attachment("default", "cd")
                ) == (job, b"\x00bytes", None, None)
        either.set_tenant_job_run("default", "r")
        assert (either.tenant_job_run("default"), either.tenant_job_run("b")) == ("r", None)

    def test_closing_a_run_once_and_its_summary_rows(self, either: Store) -> None:
        """[PG-9010] A Run closes once; its summary is kept once; its summary rows read
        the input's model when it is a string."""
        either.insert_step(msgspec.structs.replace(_STEP, step_id="m", client_token="m",
                                                   input='{"model":"q","x":[1]}'))
        assert [either.close_run("r", "closed", "t1"), either.close_run("r", "x", "t2")] == [
            True, False]
        either.set_run_summary("r", "{}")
        either.set_run_summary("r", '{"later":1}')
        run = either.get_run("r")
        assert run is not None
        assert (run.status, run.closed_at, run.summary, either.live_steps("r")) == (
            "closed", "t1", "{}", ["s", "m"])
        assert [(r[0], r[5]) for r in either.summary_rows("r")] == [("c", None), ("m", "q")]


# -- PostgreSQL's own guarantees ---------------------------------------------------------


class TestPgText:
    """Exact text on PostgreSQL (PG-9008)."""

    def test_a_label_with_nul_filters_its_run(self, pg: Callable[..., PgStore]) -> None:
        """[PG-9008] A label key and value holding U+0000 are kept as UTF-8 bytes and
        filter the Runs of the Flow and of the tenant."""
        store = _pg_seeded(pg)
        store.insert_run(msgspec.structs.replace(RUN, run_id="n", body=msgspec.json.encode(
            {"labels": {"k\x00": "v\x00", "n": 1}}).decode()))
        assert ([r.run_id for r in store.list_runs("f", label=("k\x00", "v\x00"))],
                [r.run_id for r in store.list_tenant_runs("default", label=("k", "v"))],
                [r.run_id for r in store.list_runs("f", label=("n", "1"))]) == (["n"], [], [])


class TestPgMigrations:
    """The PostgreSQL schema is versioned, one transaction per version (PG-9001)."""

    def test_a_new_schema_is_at_the_last_version_and_reopening_applies_nothing(
            self, pg: Callable[..., PgStore]) -> None:
        """[PG-9001] A store opened on a new schema leaves it at v8 in ``schema_version``;
        opening it again applies no version."""
        first = pg("mig_a")
        assert [m.version for m in PG_MIGRATIONS] == [1, 2, 3, 4, 5, 6, 7, 8] == list(
            range(1, PG_SCHEMA_VERSION + 1))
        with first._conn() as conn:
            assert conn.execute("SELECT version FROM mig_a.schema_version").fetchall() == [(8,)]
            assert pg_migrations.migrate(conn, "mig_a") == []

    def test_a_failed_migration_leaves_the_last_version_that_completed(
            self, pg: Callable[..., PgStore]) -> None:
        """[PG-9001] A migration failing half way is rolled back whole: the schema stays
        at the version before it, without the half-made table; the next open completes
        it."""
        store = pg("mig_b", migrate_to=3)
        broken = (*PG_MIGRATIONS[:3], PgMigration(4, "fails", (
            "CREATE TABLE half (x int)", "SELECT 1 / 0")), *PG_MIGRATIONS[4:])
        with store._conn() as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                pg_migrations.migrate(conn, "mig_b", migrations=broken)
            assert (pg_migrations.schema_version(conn),
                    conn.execute("SELECT to_regclass('half')").fetchone()) == (3, (None,))
            assert pg_migrations.migrate(conn, "mig_b") == [4, 5, 6, 7, 8]
            with pytest.raises(ValueError, match=r"^schema version 9 is not in 0\.\.8$"):
                pg_migrations.migrate(conn, "mig_b", 9)

    def test_stores_opening_one_schema_at_once_migrate_it_once(self, pg_dsn: str) -> None:
        """[PG-9001] Four stores opening one new schema at the same time all succeed and
        leave it at the last version (the advisory lock orders them)."""
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            stores = list(pool.map(lambda _: PgStore(pg_dsn, schema="mig_c", pool_size=1),
                                   range(4)))
        with stores[0]._conn() as conn:
            assert pg_migrations.schema_version(conn) == 8
        for s in stores:
            s.close()

    def test_a_schema_name_that_is_no_identifier_is_refused(self, pg_dsn: str) -> None:
        """[PG-9002] The schema becomes ``search_path`` of every connection, so it must be
        a lowercase identifier; anything else is a ValueError before connecting."""
        with pytest.raises(ValueError,
                           match=r"^schema name 'a; drop' is not a lowercase identifier$"):
            PgStore(pg_dsn, schema="a; drop")


class TestPgConcurrency:
    """Several stores over one database (as several processes) keep the keys (PG-9003)."""

    def test_one_token_inserted_by_eight_writers_at_once_is_one_step(
            self, pg: Callable[..., PgStore], pg_dsn: str) -> None:
        """[PG-9003] Eight threads over four stores insert one client_token at once: one
        wins, the others insert nothing and reread the winner."""
        home = _pg_seeded(pg)
        others = [PgStore(pg_dsn, schema=home.schema, pool_size=2) for _ in range(3)]
        stores = [home, *others] * 2
        gate = threading.Barrier(8)

        def claim(i: int) -> tuple[bool, str]:
            gate.wait()
            won = stores[i].insert_step(msgspec.structs.replace(
                _STEP, step_id=f"x{i}", client_token="same"))
            got = stores[i].get_step_by_token("r", "same")
            return won, got.step_id if got else ""

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(claim, range(8)))
        for s in others:
            s.close()
        winners = [f"x{i}" for i, (won, _) in enumerate(results) if won]
        assert (len(winners), {seen for _, seen in results}) == (1, set(winners))
        assert [s.ordinal for s in home.list_steps("r")] == [0, 1]

    def test_concurrent_writers_of_one_run_leave_no_gap(
            self, pg: Callable[..., PgStore], pg_dsn: str) -> None:
        """[PG-9004] Four stores each add ten Steps and ten Facts to one Run at once: the
        ordinals are 0..40 and the Fact seqs 0..39, each once."""
        home = _pg_seeded(pg)
        stores = [home, *(PgStore(pg_dsn, schema=home.schema, pool_size=1) for _ in range(3))]
        gate = threading.Barrier(4)

        def write(i: int) -> None:
            gate.wait()
            for n in range(10):
                stores[i].insert_step(msgspec.structs.replace(
                    _STEP, step_id=f"w{i}-{n}", client_token=f"w{i}-{n}"))
                stores[i].append_fact(msgspec.structs.replace(_FACT, fact_id=f"f{i}-{n}"))

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(write, range(4)))
        for s in stores[1:]:
            s.close()
        assert sorted(s.ordinal for s in home.list_steps("r")) == list(range(41))
        assert [f.seq for f in home.list_facts(run_id="r")] == list(range(40))
        assert home.run_usage("r").counts == {"queued": 41}


class TestOrchestratorOnPg:
    """The whole orchestrator runs on an injected PgStore (PG-9042)."""

    def test_a_step_records_and_replays_its_stream_on_pg(
            self, pg: Callable[..., PgStore], tmp_path: pathlib.Path) -> None:
        """[PG-9042] A Flow, a Run and an LLM Step through ``Orchestrator.running`` on a
        PgStore: the Step succeeds, its frames are in PostgreSQL (read by a store opened
        after the orchestrator closed its own), nothing is opened in data_dir, and the
        crash checks find nothing."""
        store = pg()
        cfg = mock_config(data_dir=str(tmp_path / "data"))

        async def main() -> tuple[StepStatus, str]:
            async with Orchestrator.running(cfg, drivers=default_drivers(),
                                            tools=tool_registry, store=store) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"demo": True}))
                run = orch.create_run(flow.flow_id, RunCreate(seed=7))
                step, _ = await orch.submit_step(run.run_id,
                                                 msgspec.convert(llm_step("c-1"), StepSubmit))
                sub = orch.log.subscribe(step.step_id)
                with anyio.fail_after(10):
                    while not orch.log.read(step.step_id, -1)[1]:
                        await sub.wait()
                orch.log.unsubscribe(sub)
                return orch.get_step(step.step_id).status, step.step_id

        status, step_id = anyio.run(main)
        store = pg(store.schema)  # the orchestrator closed the one it was given
        frames = store.read_events(step_id, -1)
        assert (status, frames[0][1], frames[-1][1]) == (StepStatus.SUCCEEDED, "started", "end")
        assert not (tmp_path / "data" / "orchestrator.db").exists()
        assert store.integrity() == {"seq_gaps": 0, "stale_last_seq": 0, "multi_terminal": 0,
                                     "broken_references": 0, "usage_mismatch": 0}


class TestPgInject:
    """The plugin that runs a suite on PgStore (PG-9043)."""

    def test_one_data_dir_is_one_schema(self, pg_dsn: str, tmp_path: pathlib.Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """[PG-9043] The store standing in for SQLite's is a PgStore whose schema is named
        after the data directory: reopening one directory finds its rows, another
        directory is another schema."""
        monkeypatch.setitem(pg_inject._state, "dsn", pg_dsn)
        first = pg_inject._pg_store(tmp_path / "a" / "orchestrator.db")
        seeded(cast(SqliteStore, first))
        first.close()
        again = pg_inject._pg_store(tmp_path / "a" / "orchestrator.db", "FULL")
        other = pg_inject._pg_store(tmp_path / "b" / "orchestrator.db")
        try:
            assert (again.schema == first.schema != other.schema, again.get_run("r") == RUN,
                    other.get_run("r")) == (True, True, None)
        finally:
            again.close()
            other.close()
