"""The exact-match cache's key and indexed lookup (REC-7101, REC-7102, REC-7104, REC-7108)."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from orchestrator_core.canonical import b3
from orchestrator_core.exact_cache import cache_key
from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_cache import _LOOKUP
from worker_adapters.base import EngineIdentity


def _ident(name: str = "mock", version: str = "1", build: str = "b3:build",
           model: str = "sha256:model") -> EngineIdentity:
    return EngineIdentity(name=name, version=version, build_fingerprint=build,
                          model_hash=model, settings={})


IDENT = _ident()
BASE: dict[str, Any] = {
    "tenant": "acme", "step_type": "llm_call", "input_hash": "b3:input", "seed": 7,
    "prompt_hash": "b3:prompt", "params_hash": "b3:params", "policy_hash": "b3:policy",
    "identity": IDENT, "price_table_version": "2026-01"}


class TestCacheKey:
    """The key folds the tenant, the input and every determinism input (REC-7101)."""

    def test_the_key_is_the_hash_of_the_keyed_values(self) -> None:
        """[REC-7101] The key is ``b3`` of the canonical JSON of exactly the keyed values,
        so it is the same on every server and in every process."""
        assert cache_key(**BASE) == b3({
            "v": 1, "tenant": "acme", "type": "llm_call", "input_hash": "b3:input",
            "seed": 7, "prompt_hash": "b3:prompt", "params_hash": "b3:params",
            "policy_hash": "b3:policy", "engine": "mock", "engine_version": "1",
            "engine_build": "b3:build", "model_hash": "sha256:model",
            "price_table_version": "2026-01"}) == (
            "b3:d7b3dbfddbeb434ba28825ffd2622dc06b0598bd1ddc3377aa3fed7a13ba86c1")

    @pytest.mark.parametrize("change", [
        {"tenant": "globex"}, {"step_type": "llm_plan"}, {"input_hash": "b3:other"},
        {"seed": 8}, {"prompt_hash": "b3:other"}, {"params_hash": "b3:other"},
        {"policy_hash": "b3:other"}, {"price_table_version": "2026-02"},
        {"identity": _ident(name="llama.cpp")}, {"identity": _ident(version="2")},
        {"identity": _ident(build="b3:other")}, {"identity": _ident(model="sha256:other")},
    ])
    def test_every_keyed_input_changes_the_key(self, change: dict[str, Any]) -> None:
        """[REC-7101] [REC-7104] Changing any one keyed value, the tenant included, gives
        another key."""
        assert cache_key(**{**BASE, **change}) != cache_key(**BASE)


def _store(path: pathlib.Path, **kw: Any) -> SqliteStore:
    s = SqliteStore(path, **kw)
    for tenant in ("acme", "globex"):
        s.insert_flow(FlowRow(flow_id=f"f-{tenant}", hash=f"h-{tenant}", ast_ir="{}",
                              tools="[]", config="{}", labels="{}", created_at="t",
                              tenant=tenant))
        s.insert_run(RunRow(run_id=f"r-{tenant}", flow_id=f"f-{tenant}",
                            flow_hash=f"h-{tenant}", mode="record", seed=1, replay_of=None,
                            body="{}", policy_hash="p", status="active", created_at="t",
                            tenant=tenant))
    return s


def _step(s: SqliteStore, step_id: str, run_id: str, status: str, key: str | None) -> None:
    s.insert_step(StepRow(step_id=step_id, run_id=run_id, type="llm_call",
                          client_token=step_id, input="{}", input_hash="i", placement=None,
                          status=status, seed=None, created_at="t", cache_key=key))


class TestCachedStep:
    """The store's lookup of a cache source (REC-7102, REC-7104, REC-7108)."""

    def test_the_earliest_succeeded_step_of_the_tenant_is_the_source(
            self, tmp_path: pathlib.Path) -> None:
        """[REC-7102] A failed or running Step with the key is skipped; of two succeeded
        ones the earlier is returned."""
        s = _store(tmp_path / "o.db")
        _step(s, "s-failed", "r-acme", "failed", "b3:k")
        _step(s, "s-running", "r-acme", "running", "b3:k")
        _step(s, "s-first", "r-acme", "succeeded", "b3:k")
        _step(s, "s-second", "r-acme", "succeeded", "b3:k")
        found = s.cached_step("acme", "b3:k")
        assert found is not None
        assert (found.step_id, found.cache_key) == ("s-first", "b3:k")
        assert s.cached_step("acme", "b3:other") is None

    def test_a_step_enters_the_cache_when_it_succeeds(self, tmp_path: pathlib.Path) -> None:
        """[REC-7102] A running Step is no source; the commit of its success makes it one."""
        s = _store(tmp_path / "o.db")
        _step(s, "s-1", "r-acme", "running", "b3:k")
        assert s.cached_step("acme", "b3:k") is None
        s.commit_events([], [("s-1", {"status": "succeeded"})])
        found = s.cached_step("acme", "b3:k")
        assert found is not None and found.step_id == "s-1"

    def test_another_tenants_step_is_never_found(self, tmp_path: pathlib.Path) -> None:
        """[REC-7104] A Step of another tenant's Run with the same key is not returned,
        even when it is the only one."""
        s = _store(tmp_path / "o.db")
        _step(s, "s-globex", "r-globex", "succeeded", "b3:k")
        assert s.cached_step("acme", "b3:k") is None
        found = s.cached_step("globex", "b3:k")
        assert found is not None and found.step_id == "s-globex"

    def test_the_lookup_is_one_index_probe(self, tmp_path: pathlib.Path) -> None:
        """[REC-7108] The query plan searches the partial index by key and the Run by its
        primary key: no scan of steps or runs."""
        s = _store(tmp_path / "o.db")
        plan = [row[3] for row in s._conn.execute(
            "EXPLAIN QUERY PLAN " + s._steps + _LOOKUP, ("b3:k", "acme"))]
        assert plan == [
            "SEARCH steps USING INDEX steps_cache_key (cache_key=?)",
            "CORRELATED SCALAR SUBQUERY 1",
            "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (run_id=?)",
        ]

    def test_a_store_before_v17_has_no_cache(self, tmp_path: pathlib.Path) -> None:
        """[REC-7102] A store opened at schema v16 answers None instead of failing."""
        s = _store(tmp_path / "o.db", migrate_to=16)
        assert s.cached_step("acme", "b3:k") is None
