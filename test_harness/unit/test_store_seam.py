"""The store seam: typed rows, the ordered migrations, and the one Store protocol the core
is typed against (PLACE-5008, NERVE-4041)."""

from __future__ import annotations

import ast
import collections
import inspect
import pathlib
import sqlite3
from typing import Any, cast

import anyio
import msgspec
import pytest

from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import StepStatus, StepSubmit
from orchestrator_core import migrations
from orchestrator_core.config import mock_config
from orchestrator_core.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
from orchestrator_core.rows import FactRow, RunRow, RunUsage, StepRow
from orchestrator_core.service import Orchestrator
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store
from test_harness.support import llm_step
from test_harness.unit.conftest import seeded
from test_harness.unit.test_layering import ROOT, violations
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry


def _schema(db: pathlib.Path) -> list[tuple[str, str]]:
    """Every table and index of a database with its SQL, by name."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL"
                           " ORDER BY name").fetchall()
    finally:
        con.close()


def _version(db: pathlib.Path) -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute("PRAGMA user_version").fetchone()[0])
    finally:
        con.close()


@pytest.mark.sqlite_only  # the SQLite store's migrations (PG-9053)
class TestMigrations:
    """Older databases migrate in order, one transaction per version (NERVE-4041)."""

    def test_the_table_lists_every_version_once_in_order(self) -> None:
        """[NERVE-4041] Entry i of the table takes a database to version i + 1."""
        assert [m.version for m in MIGRATIONS] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                 13, 14, 15, 16, 17]
        assert SCHEMA_VERSION == 17

    def test_one_version_at_a_time_gives_the_schema_of_a_new_store(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4041] A database opened at each version in turn, 1 to 17, ends with
        exactly the tables and indexes of a store created at once."""
        for version in range(1, SCHEMA_VERSION + 1):
            SqliteStore(tmp_path / "steps.db", migrate_to=version).close()
            assert _version(tmp_path / "steps.db") == version
        SqliteStore(tmp_path / "once.db").close()
        assert _schema(tmp_path / "steps.db") == _schema(tmp_path / "once.db")

    def test_a_failed_migration_leaves_the_last_version_that_completed(
            self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """[NERVE-4041] A migration that fails half way is rolled back whole; the
        database stays at the version before it, and the next open completes it."""
        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE half (x)")
            raise sqlite3.OperationalError("disk on fire")

        broken = (*MIGRATIONS[:-1], Migration(17, "fails", half_then_fail))
        with monkeypatch.context() as m:
            m.setattr(migrations, "MIGRATIONS", broken)
            with pytest.raises(sqlite3.OperationalError, match="disk on fire"):
                SqliteStore(tmp_path / "o.db")
        assert _version(tmp_path / "o.db") == 16
        assert "half" not in dict(_schema(tmp_path / "o.db"))
        SqliteStore(tmp_path / "o.db").close()
        assert _version(tmp_path / "o.db") == 17

    def test_a_version_outside_the_table_is_refused(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4041] Migrating to a version the table does not have is a ValueError,
        before any change; each call applies only the versions due, in order."""
        con = sqlite3.connect(tmp_path / "o.db", isolation_level=None)
        with pytest.raises(ValueError, match=r"^schema version 18 is not in 0\.\.17$"):
            migrate(con, 18)
        applied = [migrate(con, 2), migrate(con, 2), migrate(con), migrate(con, 5)]
        con.close()
        assert applied == [[1, 2], [], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], []]


class TestTypedRows:
    """The store takes and returns typed rows, never dicts (PLACE-5008)."""

    def test_a_stored_step_reads_back_as_its_row(self, store: SqliteStore) -> None:
        """[PLACE-5008] The Step row comes back with every column, its ordinal assigned."""
        assert store.get_step("s") == StepRow(
            step_id="s", run_id="r", type="llm_call", client_token="c", input="{}",
            input_hash="i", placement=None, status="queued", seed=None, created_at="t",
            tokens_in=0, tokens_out=0, cost_usd=0.0, wall_ms=0, provenance=None,
            error=None, last_seq=-1, replay_of_step=None, ordinal=0)

    def test_usage_and_facts_are_typed(self, store: SqliteStore) -> None:
        """[PLACE-5008] Run usage is a RunUsage; an appended Fact gets the next seq."""
        fact = FactRow(fact_id="x", run_id="r", flow_id="f", seq=99, type="t",
                       schema_uri="u", data="{}", emitted_by_step=None, ts="t")
        assert [store.append_fact(fact), store.append_fact(
            msgspec.structs.replace(fact, fact_id="y"))] == [0, 1]
        assert store.list_facts(run_id="r", since_seq=0) == [
            msgspec.structs.replace(fact, fact_id="y", seq=1)]
        assert store.run_usage("r") == RunUsage(tokens_in=0, tokens_out=0, cost_usd=0.0,
                                                wall_ms=0, counts={"queued": 1})

    def test_a_store_at_an_older_schema_reads_rows_with_the_later_columns_defaulted(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4041] At schema v3 (no lineage, no ordinals) rows read back with the
        defaults of the columns that version lacks."""
        old = seeded(SqliteStore(tmp_path / "o.db", migrate_to=3))
        run, step = old.get_run("r"), old.get_step("s")
        old.close()
        assert run == RunRow(run_id="r", flow_id="f", flow_hash="h", mode="record", seed=1,
                             replay_of=None, body="{}", policy_hash="p", status="active",
                             created_at="t", tenant="default", parent_run_id=None,
                             from_checkpoint=None)
        assert step is not None
        assert step.ordinal == -1


def _store_calls(tree: ast.AST) -> set[str]:
    """Names of the methods called on anything named ``store`` (``self.orch.store.x()``,
    ``store.x()``)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (isinstance(owner, ast.Name) and owner.id == "store") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "store"):
                out.add(node.func.attr)
    return out


def _protocol_methods() -> set[str]:
    return {n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")}


class TestStoreProtocol:
    """The core is typed against one Store protocol, and only the store touches SQLite
    (PLACE-5008)."""

    def test_every_store_method_the_core_calls_is_in_the_protocol(self) -> None:
        """[PLACE-5008] No module of the core calls a store method the protocol lacks."""
        called: set[str] = set()
        for path in (ROOT / "orchestrator_core").rglob("*.py"):
            called |= _store_calls(ast.parse(path.read_text()))
        assert called - _protocol_methods() == set()
        assert "commit_events" in called

    def test_the_sqlite_store_implements_each_method_with_its_signature(self) -> None:
        """[PLACE-5008] SqliteStore has every protocol method, with the same parameters
        and defaults."""
        names = sorted(_protocol_methods())
        assert [n for n in names if not callable(getattr(SqliteStore, n, None))] == []
        signatures = {n: (str(inspect.signature(getattr(Store, n))),
                          str(inspect.signature(getattr(SqliteStore, n)))) for n in names}
        assert {n: s for n, s in signatures.items() if s[0] != s[1]} == {}

    def test_only_the_store_and_its_migrations_touch_sqlite(self) -> None:
        """[PLACE-5008] No module of the core but the store (with its list and job queries
        and its import path), its migrations, its WAL checkpointer and the composition root
        imports sqlite3, sqlite_utils or the SQLite store module."""
        assert violations("orchestrator_core",
                          ("sqlite3", "sqlite_utils", "orchestrator_core.store"),
                          exempt=("orchestrator_core.store", "orchestrator_core.store_lists",
                                  "orchestrator_core.store_jobs",
                                  "orchestrator_core.store_import",
                                  "orchestrator_core.migrations",
                                  "orchestrator_core.migrations_early",
                                  "orchestrator_core.migrations_late",
                                  "orchestrator_core.wal_checkpoints",
                                  "orchestrator_core.store_run_lists",
                                  "orchestrator_core.service",
                                  "orchestrator_core.store_open")) == []

    def test_the_orchestrator_runs_on_an_injected_store(self, tmp_path: pathlib.Path) -> None:
        """[PLACE-5008] A store given to ``Orchestrator.running`` (here one that only
        delegates to a SqliteStore elsewhere) holds everything; none is opened in
        data_dir, and the given one is closed on exit."""
        inner = SqliteStore(tmp_path / "elsewhere.db")
        calls: collections.Counter[str] = collections.Counter()

        class Delegating:
            def __getattr__(self, name: str) -> Any:
                method = getattr(inner, name)

                def call(*args: Any, **kwargs: Any) -> Any:
                    calls[name] += 1
                    return method(*args, **kwargs)
                return call

        cfg = mock_config(data_dir=str(tmp_path / "data"))

        async def main() -> StepStatus:
            async with Orchestrator.running(cfg, drivers=default_drivers(),
                                            tools=tool_registry,
                                            store=cast(Store, Delegating())) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"demo": True}))
                run = orch.create_run(flow.flow_id, RunCreate(seed=7))
                step, _ = await orch.submit_step(run.run_id,
                                           msgspec.convert(llm_step("c-1"), StepSubmit))
                sub = orch.log.subscribe(step.step_id)
                with anyio.fail_after(10):
                    while not orch.log.read(step.step_id, -1)[1]:
                        await sub.wait()
                orch.log.unsubscribe(sub)
                return orch.get_step(step.step_id).status

        assert anyio.run(main) is StepStatus.SUCCEEDED
        assert {k: calls[k] for k in ("insert_flow", "insert_run", "insert_step", "close")} \
            == {"insert_flow": 1, "insert_run": 1, "insert_step": 1, "close": 1}
        assert not (tmp_path / "data" / "orchestrator.db").exists()
        assert _version(tmp_path / "elsewhere.db") == SCHEMA_VERSION
