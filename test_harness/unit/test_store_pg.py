"""The PostgreSQL store, PgStore, against the same behaviour as the SQLite store (PG-9000).

A throwaway cluster is started once for the session when the PostgreSQL binaries are
installed (:mod:`test_harness.pg_support`); each test gets a fresh schema. The store-level
test classes of the SQLite store run here again, unchanged, on a PgStore (``...OnPg``),
with their fixtures seeded the same way; the tests that read SQLite's own files, query
plans or connection are replaced by PostgreSQL ones [PG-9041]. The contract tests that
run on each backend, and PostgreSQL's own, are in ``test_store_pg_contract.py``.
"""

from __future__ import annotations

import inspect
import itertools
import pathlib
from collections.abc import Callable, Iterator
from typing import cast

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from orchestrator_core.clock import FakeClock
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.rows import FlowRow, StepRow
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store
from orchestrator_core.store_pg import PgStore
from test_harness.unit import test_commit_path as commit_path
from test_harness.unit import test_eventlog as eventlog
from test_harness.unit import test_llm_jobs as llm_jobs
from test_harness.unit import test_navigation as navigation
from test_harness.unit import test_packed_frames as packed
from test_harness.unit import test_run_log as run_log
from test_harness.unit import test_runs_list as runs_list
from test_harness.unit import test_store_seam as seam
from test_harness.unit.conftest import seeded

_schemas = itertools.count()



@pytest.fixture
def pg(pg_dsn: str) -> Iterator[Callable[..., PgStore]]:
    """Opens PgStores, each in a fresh schema unless one is named; closes them after."""
    opened: list[PgStore] = []

    def open_store(schema: str | None = None, **kwargs: int) -> PgStore:
        opened.append(PgStore(pg_dsn, schema=schema or f"t{next(_schemas)}", **kwargs))
        return opened[-1]

    yield open_store
    for s in opened:
        s.close()


def _pg_seeded(pg: Callable[..., PgStore]) -> PgStore:
    return cast(PgStore, seeded(cast(SqliteStore, pg())))


# -- the SQLite store's test classes, on a PgStore ---------------------------------------


class TestTypedRowsOnPg(seam.TestTypedRows):
    """[PG-9000] Typed rows read back the same from PostgreSQL."""

    test_a_store_at_an_older_schema_reads_rows_with_the_later_columns_defaulted = None  # type: ignore[assignment]  # SQLite's history

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """The seeded store, on PostgreSQL."""
        return _pg_seeded(pg)


class TestSignaturesOnPg:
    """PgStore implements the protocol (PG-9000)."""

    def test_the_pg_store_implements_each_method_with_its_signature(self) -> None:
        """[PG-9000] PgStore has every protocol method, with the same parameters and
        defaults."""
        names = sorted(n for n, v in vars(Store).items()
                       if callable(v) and not n.startswith("_"))
        assert [n for n in names if not callable(getattr(PgStore, n, None))] == []
        signatures = {n: (str(inspect.signature(getattr(Store, n))),
                          str(inspect.signature(getattr(PgStore, n)))) for n in names}
        assert {n: s for n, s in signatures.items() if s[0] != s[1]} == {}


def _navigation_store(s: PgStore) -> PgStore:
    """The data of ``test_navigation``'s store fixture."""
    for i in range(3):
        s.insert_flow(navigation._flow(f"fa{i}", "a"))
        if i == 0:
            s.insert_flow(navigation._flow("fb0", "b"))
    for i in range(250):
        s.insert_run(navigation._run(f"r{i:03d}", "fa0", "a", status="cancelled" if i % 3 == 0
                                     else "active", labels={"team": "xy"[i % 2]}))
    s.insert_run(navigation._run("rb", "fb0", "b", labels={"team": "x"}))
    for i in range(7):
        assert s.insert_step(navigation._step(f"s{i}", "r000"))
    return s


class TestPagingOnPg(navigation.TestPaging):
    """[PG-9010] The navigation pages, on PostgreSQL."""

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """``test_navigation``'s data, on PostgreSQL."""
        return _navigation_store(pg())


class TestRefusalsOnPg(navigation.TestRefusals):
    """[PG-9010] Foreign ids and bad cursors, on PostgreSQL."""

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """``test_navigation``'s data, on PostgreSQL."""
        return _navigation_store(pg())


class TestTenantRunPagesOnPg(runs_list.TestTenantRunPages):
    """[PG-9010] The tenant-wide Run list, on PostgreSQL."""

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """``test_runs_list``'s data, on PostgreSQL."""
        s = pg()
        for flow_id, tenant in (("fa0", "a"), ("fa1", "a"), ("fb0", "b")):
            s.insert_flow(navigation._flow(flow_id, tenant))
        for i in range(150):
            s.insert_run(navigation._run(f"r{i:03d}", f"fa{i % 2}", "a",
                                         mode="replay" if i % 5 == 0 else "record",
                                         status="cancelled" if i % 3 == 0 else "active",
                                         labels={"team": "xy"[i // 2 % 2]}))
            if i in (10, 20):
                s.insert_run(navigation._run(f"rb{i // 20}", "fb0", "b", labels={"team": "x"}))
        return s


class TestRunPositionsOnPg(run_log.TestRunPositions):
    """[PG-9007] Run positions in commit order, on PostgreSQL."""

    test_the_run_log_reads_use_its_key = None  # type: ignore[assignment]  # SQLite's plans

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """The seeded store, on PostgreSQL."""
        return _pg_seeded(pg)


class TestAttemptsOnPg:
    """The idempotency key holds the attempt, as a constraint (PG-9003)."""

    def test_a_token_has_one_step_per_attempt_and_names_the_latest(
            self, pg: Callable[..., PgStore]) -> None:
        """[PG-9003] Attempt 1 of a token is a second Step; attempt 1 again is refused;
        the token names attempt 1; the constraint refuses an update that would repeat a
        key."""
        store = _pg_seeded(pg)
        assert run_log._step(store, "a1", client_token="c", attempt=1, retry_of="s")  # type: ignore[arg-type]
        assert not run_log._step(store, "a1b", client_token="c", attempt=1, retry_of="s")  # type: ignore[arg-type]
        latest = store.get_step_by_token("r", "c")
        assert latest is not None
        assert (latest.step_id, latest.attempt, latest.retry_of) == ("a1", 1, "s")
        with pytest.raises(psycopg.errors.UniqueViolation), store._conn() as conn:
            conn.execute("UPDATE steps SET attempt = 1 WHERE step_id = 's'")


class TestPackedRowsOnPg(packed.TestPackedRows):
    """[PG-9005] Packed rows, on PostgreSQL."""

    def test_one_commit_of_six_frames_is_one_row(self, store: SqliteStore,
                                                 tmp_path: pathlib.Path) -> None:
        """[PG-9005] Six frames of one Step in one group commit are one ``events`` row."""
        store.commit_events(packed.FRAMES, [("s", {"last_seq": 5})])
        with cast(PgStore, store)._conn() as conn:
            assert conn.execute("SELECT COUNT(*), MIN(last_seq) FROM events").fetchone() == (1, 5)

    test_a_committed_packed_row_survives_a_crash = None  # type: ignore[assignment]
    test_single_frame_rows_of_an_older_server_still_read = None  # type: ignore[assignment]

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """The seeded store, on PostgreSQL."""
        return _pg_seeded(pg)


class TestGroupCommitOnPg(eventlog.TestGroupCommit):
    """[PG-9005] The event log's group commit over a PgStore."""

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """The seeded store, on PostgreSQL."""
        return _pg_seeded(pg)

    @pytest.fixture
    def metrics(self) -> Metrics:
        """Metrics on a fresh registry."""
        return Metrics(CollectorRegistry())

    @pytest.fixture
    def log(self, store: PgStore, metrics: Metrics) -> EventLog:
        """``test_eventlog``'s log, on PostgreSQL."""
        lg = EventLog(store, FakeClock(), metrics, commit_max_frames=4, ephemeral_capacity=2)
        lg.open("s", "r")
        return lg


class TestGroupCommitUpdatesOnPg(commit_path.TestGroupCommitUpdates):
    """[PG-9005] A group's cursors and final columns in one transaction, on PostgreSQL."""

    @pytest.fixture
    def two(self, pg: Callable[..., PgStore]) -> PgStore:
        """The seeded store with a second queued Step ``s2``, on PostgreSQL."""
        store = _pg_seeded(pg)
        store.insert_step(StepRow(step_id="s2", run_id="r", type="llm_call",
                                  client_token="c2", input="{}", input_hash="i",
                                  placement=None, status="queued", seed=None, created_at="t"))
        return store


class TestIdentityOnPg(llm_jobs.TestIdentity):
    """[PG-9020] The tenant's job Run, on PostgreSQL."""

    @pytest.fixture
    def store(self, pg: Callable[..., PgStore]) -> PgStore:
        """A fresh store with one Flow, on PostgreSQL."""
        s = pg()
        s.insert_flow(FlowRow(tenant="alpha", flow_id="flw_1", hash="b3:1", ast_ir="{}",
                              tools="[]", config="{}", labels="{}", created_at="t"))
        return s
