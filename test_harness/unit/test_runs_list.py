"""The tenant-wide Run list, ``GET /v1/runs``: pages, filters, tenancy, index use
(REC-7051)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from contracts.errors import InvalidParams
from orchestrator_core.config import ServerConfig
from orchestrator_core.navigation_runs import list_tenant_runs
from orchestrator_core.store import SqliteStore
from orchestratord.client import OrchestratorClient
from test_harness.support import app_client
from test_harness.unit.test_navigation import _flow, _run


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[SqliteStore]:
    """Tenant a has flows fa0 and fa1 with 150 runs r000..r149 alternating between them
    (labels alternate team x / y by pairs, every third one cancelled, every fifth a
    replay); tenant b has fb0 with runs rb0 and rb1 between them."""
    s = SqliteStore(tmp_path / "o.db")
    for flow_id, tenant in (("fa0", "a"), ("fa1", "a"), ("fb0", "b")):
        s.insert_flow(_flow(flow_id, tenant))
    for i in range(150):
        s.insert_run(_run(f"r{i:03d}", f"fa{i % 2}", "a",
                          mode="replay" if i % 5 == 0 else "record",
                          status="cancelled" if i % 3 == 0 else "active",
                          labels={"team": "xy"[i // 2 % 2]}))
        if i in (10, 20):
            s.insert_run(_run(f"rb{i // 20}", "fb0", "b", labels={"team": "x"}))
    yield s
    s.close()


def _walk(store: SqliteStore, tenant: str, limit: int, **filters: str) -> list[list[str]]:
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page, after = list_tenant_runs(store, tenant, after=after, limit=limit, **filters)
        pages.append([r.run_id for r in page])
        if after is None:
            return pages


class TestTenantRunPages:
    """Cursor pages see every Run of the tenant once, of every Flow, oldest first."""

    def test_runs_of_both_flows_page_in_creation_order(self, store: SqliteStore) -> None:
        """[REC-7051] 64, 64 and 22 Runs of tenant a across its two Flows, each once,
        and none of tenant b's."""
        pages = _walk(store, "a", 64)
        assert [len(p) for p in pages] == [64, 64, 22]
        assert [r for p in pages for r in p] == [f"r{i:03d}" for i in range(150)]
        assert _walk(store, "b", 100) == [["rb0", "rb1"]]

    def test_filters_combine_across_pages(self, store: SqliteStore) -> None:
        """[REC-7051] mode, status and label together, 3 per page."""
        runs = [r for p in _walk(store, "a", 3, mode="replay", status="cancelled",
                                 label="team:x") for r in p]
        assert runs == ["r000", "r045", "r060", "r105", "r120"]
        assert [r for p in _walk(store, "a", 100, mode="strict_replay") for r in p] == []

    def test_another_tenants_run_is_no_cursor(self, store: SqliteStore) -> None:
        """[REC-7051] Tenant a paging after tenant b's run, or an unknown one, is refused
        alike, naming ``after``."""
        answers = []
        for after in ("rb0", "r-unknown"):
            with pytest.raises(InvalidParams) as refused:
                list_tenant_runs(store, "a", after=after)
            answers.append((refused.value.code, refused.value.message, refused.value.data))
        assert answers == [("INVALID_PARAMS", "after must name a run of this tenant",
                            {"field": "after"})] * 2

    def test_bad_filters_and_limits_name_their_field(self, store: SqliteStore) -> None:
        """[REC-7051] An unknown mode or status, a label without a colon and a limit
        outside 1..1000 are each a typed refusal naming the parameter."""
        fields = []
        for kwargs in ({"mode": "live"}, {"status": "done"}, {"label": "nocolon"},
                       {"limit": 0}, {"limit": 1001}):
            with pytest.raises(InvalidParams) as refused:
                list_tenant_runs(store, "a", **kwargs)
            assert refused.value.data is not None
            fields.append(refused.value.data["field"])
        assert fields == ["mode", "status", "label", "limit", "limit"]


@pytest.mark.sqlite_only  # SQLite's query plans and migrations (PG-9053)
class TestTenantRunIndexes:
    """Every page is one index range read (no scan, no sort)."""

    def test_every_query_searches_an_index_without_sorting(self, store: SqliteStore) -> None:
        """[REC-7051] EXPLAIN QUERY PLAN of each statement the list runs, for every
        combination of filters: SEARCH only, no SCAN and no temporary B-tree."""
        statements: list[str] = []
        store._conn.set_trace_callback(statements.append)
        store.tenant_run_position("a", "r005")
        for mode in (None, "record"):
            for status in (None, "active"):
                for label in (None, ("team", "x")):
                    store.list_tenant_runs("a", mode=mode, status=status, label=label,
                                           after=5, limit=10)
        store._conn.set_trace_callback(None)
        assert len(statements) == 9
        for sql in statements:
            plan = [row[3] for row in store._conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert all(p.startswith("SEARCH") for p in plan), (sql, plan)
            assert not any("TEMP B-TREE" in p for p in plan), (sql, plan)

    def test_v13_indexes_the_labels_of_runs_stored_before_it(
            self, tmp_path: pathlib.Path) -> None:
        """[REC-7051] [NERVE-4041] Runs stored at schema v12 are found by tenant and label
        after the store migrates to v13, and another tenant's equal label is not."""
        old = SqliteStore(tmp_path / "o.db", migrate_to=12)
        old.insert_flow(_flow("f", "a"))
        old.insert_flow(_flow("g", "b"))
        old.insert_run(_run("r-old", "f", "a", labels={"team": "x", "k": "v:w"}))
        old.insert_run(_run("r-b", "g", "b", labels={"team": "x"}))
        old.close()
        new = SqliteStore(tmp_path / "o.db")
        new.insert_run(_run("r-new", "f", "a", labels={"team": "x"}))
        try:
            assert [r.run_id for r in new.list_tenant_runs("a", label=("team", "x"))] == [
                "r-old", "r-new"]
            assert [r.run_id for r in new.list_tenant_runs("a", label=("k", "v:w"))] == [
                "r-old"]
            assert [r.run_id for r in new.list_tenant_runs("b")] == ["r-b"]
        finally:
            new.close()


class TestRunsRoute:
    """``GET /v1/runs`` over HTTP, with bearer tokens of two tenants."""

    def test_each_tenant_pages_its_own_runs_with_a_next_link(
            self, mock_cfg: ServerConfig) -> None:
        """[REC-7051] Tenant alpha's three Runs of two Flows two at a time, with the
        filters kept in the Link; tenant beta sees only its own Run, and alpha's cursor
        in beta's list is a 400 naming ``after``."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"tok-a": "alpha",
                                                             "tok-b": "beta"})
        a, b = {"Authorization": "Bearer tok-a"}, {"Authorization": "Bearer tok-b"}
        with app_client(cfg) as c:
            flows = [c.post("/v1/flows", json={"ast_ir": {"n": i}}, headers=a).json()[
                "flow_id"] for i in range(2)]
            runs = [c.post(f"/v1/flows/{flows[i % 2]}/runs", json={
                "seed": i, "labels": {"k": "v"}}, headers=a).json()["run_id"]
                for i in range(3)]
            fb = c.post("/v1/flows", json={"ast_ir": {"n": 0}}, headers=b).json()["flow_id"]
            rb = c.post(f"/v1/flows/{fb}/runs", json={"labels": {"k": "v"}},
                        headers=b).json()["run_id"]
            first = c.get("/v1/runs?label=k:v&limit=2", headers=a)
            second = c.get(f"/v1/runs?label=k:v&limit=2&after={runs[1]}", headers=a)
            theirs = c.get("/v1/runs", headers=b)
            crossed = c.get(f"/v1/runs?after={runs[0]}", headers=b)
            anonymous = c.get("/v1/runs")
        assert [r["run_id"] for r in first.json()] == runs[:2]
        assert first.headers["link"] == (
            f'</v1/runs?label=k%3Av&limit=2&after={runs[1]}>; rel="next"')
        assert ([r["run_id"] for r in second.json()], second.headers.get("link")) == (
            runs[2:], None)
        assert [r["run_id"] for r in theirs.json()] == [rb]
        assert (crossed.status_code, crossed.json()["code"], crossed.json()["data"]) == (
            400, "INVALID_PARAMS", {"field": "after"})
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "UNAUTHORIZED")

    @pytest.mark.anyio
    async def test_the_client_lists_runs_of_every_flow(self, mock_cfg: ServerConfig) -> None:
        """[REC-7051] ``OrchestratorClient.list_all_runs`` walks the list by its cursor
        and passes the filters."""
        with app_client(mock_cfg) as c:
            def serve(request: httpx.Request) -> httpx.Response:
                resp = c.request(request.method, request.url.raw_path.decode(),
                                 content=request.content,
                                 headers={"content-type": "application/json"})
                return httpx.Response(resp.status_code, headers=resp.headers,
                                      content=resp.content)

            async with OrchestratorClient("http://o",
                                          transport=httpx.MockTransport(serve)) as oc:
                flows = [(await oc.create_flow({"n": i})).flow_id for i in range(2)]
                runs = [(await oc.create_run(flows[i % 2], seed=i)).run_id for i in range(3)]
                first, after = await oc.list_all_runs(limit=2)
                rest, end = await oc.list_all_runs(limit=2, after=after)
                replays, none = await oc.list_all_runs(mode="replay")
        assert ([r.run_id for r in first], after) == (runs[:2], runs[1])
        assert ([r.run_id for r in rest], end) == (runs[2:], None)
        assert (replays, none) == ([], None)
