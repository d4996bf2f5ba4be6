"""The navigation lists over the store: pages, cursors, tenancy, index use (NERVE-4061)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import httpx
import pytest

from contracts.errors import InvalidParams, NotFound
from orchestrator_core import navigation
from orchestrator_core.config import ServerConfig
from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore
from orchestratord.client import OrchestratorClient
from test_harness.support import app_client, llm_step


def _flow(flow_id: str, tenant: str) -> FlowRow:
    return FlowRow(flow_id=flow_id, hash=f"b3:{flow_id}", ast_ir="{}", tools="[]",
                   config="{}", labels=None, created_at="2026-01-01T00:00:00Z", tenant=tenant)


_BODY = {"budgets": {}, "policy": {}, "pool_policy": {"placement": {"strategy": "auto"}},
         "fs_policy": {}}


def _run(run_id: str, flow_id: str, tenant: str, *, mode: str = "record",
         status: str = "active", labels: dict[str, str] | None = None) -> RunRow:
    return RunRow(run_id=run_id, flow_id=flow_id, flow_hash=f"b3:{flow_id}", mode=mode,
                  seed=1, replay_of=None, body=json.dumps({**_BODY, "labels": labels or {}}),
                  policy_hash="p", status=status, created_at="2026-01-01T00:00:00Z",
                  tenant=tenant)


def _step(step_id: str, run_id: str) -> StepRow:
    return StepRow(step_id=step_id, run_id=run_id, type="llm_call", client_token=step_id,
                   input="{}", input_hash="i", placement=None, status="queued", seed=None,
                   created_at="t", tokens_in=0, tokens_out=0, cost_usd=0.0, wall_ms=0,
                   provenance=None, error=None, last_seq=-1, replay_of_step=None)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[SqliteStore]:
    """Tenants a and b: a has flows fa0..fa2 (fa0 with 250 runs r000..r249 whose labels
    alternate team x / y, every third one cancelled), b has fb0 with one run; run
    r000 has 7 steps s0..s6."""
    s = SqliteStore(tmp_path / "o.db")
    for i in range(3):
        s.insert_flow(_flow(f"fa{i}", "a"))
        if i == 0:
            s.insert_flow(_flow("fb0", "b"))
    for i in range(250):
        s.insert_run(_run(f"r{i:03d}", "fa0", "a", status="cancelled" if i % 3 == 0
                          else "active", labels={"team": "xy"[i % 2]}))
    s.insert_run(_run("rb", "fb0", "b", labels={"team": "x"}))
    for i in range(7):
        assert s.insert_step(_step(f"s{i}", "r000"))
    yield s
    s.close()


def _walk_runs(store: SqliteStore, limit: int, **filters: str) -> list[list[str]]:
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page, after = navigation.list_runs(store, "fa0", "a", after=after, limit=limit,
                                           **filters)
        pages.append([r.run_id for r in page])
        if after is None:
            return pages


class TestPaging:
    """Cursor pages see every item once, in order."""

    def test_flows_page_in_creation_order_within_the_tenant(self, store: SqliteStore) -> None:
        """[NERVE-4061] Tenant a's Flows two at a time; the cursor is the last flow_id."""
        first, after = navigation.list_flows(store, "a", limit=2)
        assert ([f.flow_id for f in first], after) == (["fa0", "fa1"], "fa1")
        rest, after = navigation.list_flows(store, "a", after="fa1", limit=2)
        assert ([f.flow_id for f in rest], after) == (["fa2"], None)
        assert [f.flow_id for f in navigation.list_flows(store, "b")[0]] == ["fb0"]

    def test_runs_page_through_250_runs_in_pages_of_100(self, store: SqliteStore) -> None:
        """[NERVE-4061] 100, 100 and 50 Runs, oldest first, each once."""
        pages = _walk_runs(store, 100)
        assert [len(p) for p in pages] == [100, 100, 50]
        assert [r for p in pages for r in p] == [f"r{i:03d}" for i in range(250)]

    def test_runs_filters_combine_across_pages(self, store: SqliteStore) -> None:
        """[NERVE-4061] label and status together, 7 per page."""
        runs = [r for p in _walk_runs(store, 7, label="team:x", status="cancelled") for r in p]
        assert runs == [f"r{i:03d}" for i in range(250) if i % 6 == 0]
        assert [r for p in _walk_runs(store, 100, mode="replay") for r in p] == []

    def test_steps_page_in_submission_order(self, store: SqliteStore) -> None:
        """[NERVE-4061] Steps after s2, three at a time."""
        page, after = navigation.list_steps(store, "r000", "a", after="s2", limit=3)
        assert ([s.step_id for s in page], after) == (["s3", "s4", "s5"], "s5")


class TestRefusals:
    """Bad cursors and foreign ids."""

    def test_another_tenants_flow_is_not_found(self, store: SqliteStore) -> None:
        """[NERVE-4061] Tenant b asking for tenant a's Flow's Runs gets NotFound."""
        with pytest.raises(NotFound) as found:
            navigation.list_runs(store, "fa0", "b")
        assert (found.value.code, str(found.value.message), found.value.data) == (
            "NOT_FOUND", "no flow fa0", {"flow_id": "fa0"})

    def test_another_tenants_run_is_not_found(self, store: SqliteStore) -> None:
        """[NERVE-4061] Tenant b asking for tenant a's Run's Steps gets NotFound."""
        with pytest.raises(NotFound):
            navigation.list_steps(store, "r000", "b")

    def test_a_cursor_from_another_list_is_refused(self, store: SqliteStore) -> None:
        """[NERVE-4061] A Run of another Flow, a Flow of another tenant and a Step of
        another Run are no cursors."""
        store.insert_run(_run("r-other", "fa1", "a"))
        for call in (lambda: navigation.list_runs(store, "fa0", "a", after="rb"),
                     lambda: navigation.list_runs(store, "fa0", "a", after="r-other"),
                     lambda: navigation.list_flows(store, "a", after="fb0"),
                     lambda: navigation.list_steps(store, "r001", "a", after="s0")):
            with pytest.raises(InvalidParams) as refused:
                call()
            assert refused.value.data == {"field": "after"}


@pytest.mark.sqlite_only  # SQLite's query plans and migrations (PG-9053)
class TestIndexes:
    """Every list is one index range read (no scan, no sort)."""

    def test_every_list_query_searches_an_index_without_sorting(
            self, store: SqliteStore) -> None:
        """[NERVE-4061] EXPLAIN QUERY PLAN of each statement the lists run: SEARCH
        only, no SCAN and no temporary B-tree."""
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        store.list_flows("a", 0, 10)
        for mode, status in ((None, None), ("record", None), (None, "active"),
                             ("record", "active")):
            store.list_runs("fa0", mode=mode, status=status, after=5, limit=10)
            store.list_runs("fa0", mode=mode, status=status, label=("team", "x"), after=5,
                            limit=10)
        store.list_steps_page("r000", 2, 10)
        store._conn.set_trace_callback(None)
        assert len(statements) == 10
        for sql in statements:
            plan = [row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert all(p.startswith("SEARCH") for p in plan), (sql, plan)
            assert not any("TEMP B-TREE" in p for p in plan), (sql, plan)

    def test_v12_indexes_the_labels_of_runs_stored_before_it(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4041] [NERVE-4061] A Run stored at schema v11 is found by its label
        after the store migrates to v12."""
        old = SqliteStore(tmp_path / "o.db", migrate_to=11)
        old.insert_flow(_flow("f", "a"))
        old.insert_run(_run("r-old", "f", "a", labels={"team": "x", "k": "v:w"}))
        old.close()
        new = SqliteStore(tmp_path / "o.db")
        new.insert_run(_run("r-new", "f", "a", labels={"team": "x"}))
        try:
            assert [r.run_id for r in new.list_runs("f", label=("team", "x"))] == [
                "r-old", "r-new"]
            assert [r.run_id for r in new.list_runs("f", label=("k", "v:w"))] == ["r-old"]
        finally:
            new.close()


class TestPythonClient:
    """``list_flows``, ``list_runs`` and ``list_steps`` of the Python client."""

    @pytest.mark.anyio
    async def test_the_client_walks_each_list_by_its_next_cursor(
            self, mock_cfg: ServerConfig) -> None:
        """[NERVE-4061] Three Flows two at a time, a label-filtered Run list, and a
        Run's Steps in submission order, each walk ending with a None cursor."""
        with app_client(mock_cfg) as c:
            def serve(request: httpx.Request) -> httpx.Response:
                resp = c.request(request.method, request.url.raw_path.decode(),
                                 content=request.content,
                                 headers={"content-type": "application/json"})
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                flows = [(await oc.create_flow({"n": i})).flow_id for i in range(3)]
                first, after = await oc.list_flows(limit=2)
                rest, end = await oc.list_flows(limit=2, after=after)
                runs = [(await oc.create_run(flows[0], seed=i, labels={"k": f"v{i % 2}"})
                         ).run_id for i in range(3)]
                labelled, no_more = await oc.list_runs(flows[0], label="k:v0", limit=5)
                steps = [(await oc.submit_step(runs[0], llm_step(f"t{i}"))).step_id
                         for i in range(3)]
                listed, last = await oc.list_steps(runs[0], after=steps[0])
                with pytest.raises(InvalidParams) as refused:
                    await oc.list_runs(flows[0], status="done")
        assert ([f.flow_id for f in first], after, [f.flow_id for f in rest], end) == (
            flows[:2], flows[1], flows[2:], None)
        assert ([r.run_id for r in labelled], no_more) == ([runs[0], runs[2]], None)
        assert ([s.step_id for s in listed], last) == (steps[1:], None)
        assert refused.value.data == {"field": "status"}
