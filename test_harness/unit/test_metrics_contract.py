"""The metrics contract: what /metrics exports against contracts/metrics.json, label
budgets, scrapes that move nothing, and tokens counted exactly as recorded.

[OBS-8050] every exported family is in the committed list with its type and labels, and
every listed family is exported. [OBS-8051] the task, token, placement and backpressure
metrics move when LLM Steps are admitted, refused and run. [OBS-8052] scraping moves no
counter. [OBS-8053] tokens_out_total moves by exactly the Step's recorded tokens_out.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from prometheus_client.metrics import MetricWrapperBase

from orchestrator_core.config import mock_config
from orchestrator_core.metrics import Metrics
from test_harness.support import app_client, http_run_step, llm_step

CONTRACT = json.loads((pathlib.Path(__file__).parents[2] / "contracts" / "metrics.json")
                      .read_text())

_SUFFIXES = {"counter": "_total"}


def exported(metrics: Metrics) -> dict[str, dict[str, Any]]:
    """Family name (as scraped, ``_total`` on counters) -> type and sorted label names."""
    declared = {w._name: w for w in vars(metrics).values()
                if isinstance(w, MetricWrapperBase)}
    out: dict[str, dict[str, Any]] = {}
    for fam in metrics.registry.collect():
        wrapper = declared.get(fam.name)
        if wrapper is not None:
            labels = set(wrapper._labelnames)
        else:
            labels = {k for s in fam.samples for k in s.labels} - {"le"}
        out[fam.name + _SUFFIXES.get(fam.type, "")] = {"type": fam.type,
                                                      "labels": sorted(labels)}
    return out


def samples(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name``: sorted label pairs -> value."""
    return {tuple(sorted(s.labels.items())): s.value
            for fam in metrics.registry.collect() for s in fam.samples if s.name == name}


def new_run(client: TestClient[Any]) -> str:
    """A fresh Run on an empty Flow."""
    flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
    return str(client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"])


MOCK_TASK = (("engine", "mock"), ("engine_version", "1"), ("pool_id", "mock-0"),
             ("replica_id", "mock-0/r0"))


class TestMetricsContract:
    """contracts/metrics.json against what the server exports."""

    def test_exported_families_match_the_contract_both_ways(self, tmp_path: pathlib.Path) -> None:
        """Every family a running server exports is listed with its type and labels,
        every listed family is exported, and the budget names exactly the labels used."""
        metrics = Metrics()
        with app_client(mock_config(data_dir=str(tmp_path)), metrics=metrics):
            got = exported(metrics)
        want = {m["name"]: {"type": m["type"], "labels": m["labels"]}
                for m in CONTRACT["metrics"]}
        assert sorted(set(got) - set(want)) == []
        assert sorted(set(want) - set(got)) == []
        assert {k: v for k, v in got.items() if want[k] != v} == {}
        used = {label for m in CONTRACT["metrics"] for label in m["labels"]}
        assert sorted(used ^ set(CONTRACT["label_cardinality_budget"])) == []

    def test_label_values_stay_within_their_budgets(self, tmp_path: pathlib.Path) -> None:
        """After Steps, refusals and scrapes, llama-orch's labels all have values and no
        label has more distinct values than its budget."""
        metrics = Metrics()
        with app_client(mock_config(data_dir=str(tmp_path)), metrics=metrics) as client:
            run_id = new_run(client)
            for i in range(3):
                http_run_step(client, run_id, llm_step(f"b-{i}"))
            client.post(f"/v1/runs/{run_id}/steps", json=llm_step("b-x", model="mock:nope"))
            client.get("/metrics")
            seen: dict[str, set[str]] = {}
            for fam in metrics.registry.collect():
                for s in fam.samples:
                    for k, v in s.labels.items():
                        seen.setdefault(k, set()).add(v)
        budget = CONTRACT["label_cardinality_budget"]
        assert sorted({"engine", "engine_version", "pool_id", "replica_id", "priority",
                       "reason", "outcome"} - set(seen)) == []
        assert {k: len(v) for k, v in seen.items()
                if k != "le" and len(v) > budget[k]} == {}


class TestTaskMetrics:
    """The llama-orch task metrics move with LLM Steps."""

    def test_one_step_moves_tokens_by_exactly_its_recorded_usage(
            self, tmp_path: pathlib.Path) -> None:
        """One mock-engine llm_call moves tokens_in_total and tokens_out_total by exactly
        the tokens_in and tokens_out of its end frame's provenance, and counts one task
        enqueued and started."""
        metrics = Metrics()
        cfg = mock_config(data_dir=str(tmp_path), replicas=1)
        with app_client(cfg, metrics=metrics) as client:
            _resp, frames = http_run_step(client, new_run(client), llm_step("tok-1"))
        prov = json.loads(frames[-1]["data"])["provenance"]
        assert (frames[-1]["event"], prov["tokens_out"] > 0) == ("end", True)
        assert samples(metrics, "tokens_out_total") == {MOCK_TASK: float(prov["tokens_out"])}
        assert samples(metrics, "tokens_in_total") == {MOCK_TASK: float(prov["tokens_in"])}
        task = (*MOCK_TASK, ("priority", "interactive"))
        assert samples(metrics, "tasks_enqueued_total") == {tuple(sorted(task)): 1.0}
        assert samples(metrics, "tasks_started_total") == {tuple(sorted(task)): 1.0}
        assert samples(metrics, "placement_decisions_total") == {
            (("fallback", "false"), ("outcome", "placed"), ("pinned", "false")): 1.0}

    def test_a_full_queue_counts_a_rejection_and_backpressure(
            self, tmp_path: pathlib.Path) -> None:
        """A Step refused with QUEUE_FULL counts in tasks_rejected_total and
        admission_backpressure_events_total; an unknown model in tasks_rejected_total and
        placement_decisions_total only."""
        metrics = Metrics()
        cfg = mock_config(data_dir=str(tmp_path), replicas=1,
                          mock_options={"tokens_per_s": 50})
        cfg = msgspec.structs.replace(cfg, pools=[msgspec.structs.replace(
            cfg.pools[0], queue_capacity=0)])
        with app_client(cfg, metrics=metrics) as client:
            run_id = new_run(client)
            full = client.post(f"/v1/runs/{run_id}/steps", json=llm_step("q-0"))
            unknown = client.post(f"/v1/runs/{run_id}/steps",
                                  json=llm_step("q-1", model="mock:nope"))
        assert (full.json()["code"], unknown.json()["code"]) == ("QUEUE_FULL", "INVALID_MODEL")
        assert samples(metrics, "tasks_rejected_total") == {
            (("engine", "mock"), ("reason", "QUEUE_FULL")): 1.0,
            (("engine", ""), ("reason", "INVALID_MODEL")): 1.0}
        assert samples(metrics, "admission_backpressure_events_total") == {
            (("engine", "mock"), ("policy", "reject")): 1.0}
        assert samples(metrics, "placement_decisions_total") == {
            (("fallback", "false"), ("outcome", "placed"), ("pinned", "false")): 1.0,
            (("fallback", "false"), ("outcome", "INVALID_MODEL"), ("pinned", "false")): 1.0}

    def test_scrape_shows_queue_depth_and_replica_state(self, tmp_path: pathlib.Path) -> None:
        """queue_depth, pool_ready, replica_health and replica_breaker_state describe the
        pools as they are when scraped."""
        with app_client(mock_config(data_dir=str(tmp_path), replicas=1)) as client:
            text = client.get("/metrics").text
        lines = [ln for ln in text.splitlines() if ln.startswith(
            ("queue_depth{", "pool_ready{", 'replica_health{pool_id="mock-0",'
             'replica_id="mock-0/r0",state="ready"}', "replica_breaker_state{"))]
        assert lines == [
            'queue_depth{engine="mock",engine_version="1",pool_id="mock-0",'
            'priority="interactive"} 0.0',
            'pool_ready{pool_id="mock-0"} 1.0',
            'replica_health{pool_id="mock-0",replica_id="mock-0/r0",state="ready"} 1.0',
            'replica_breaker_state{pool_id="mock-0",replica_id="mock-0/r0",state="closed"} 1.0',
            'replica_breaker_state{pool_id="mock-0",replica_id="mock-0/r0",'
            'state="half_open"} 0.0',
            'replica_breaker_state{pool_id="mock-0",replica_id="mock-0/r0",state="open"} 0.0']

    def test_http_duration_is_labelled_by_route_template(self, tmp_path: pathlib.Path) -> None:
        """Two Steps read at two raw paths are one http_request_duration_ms series, under
        the route template."""
        metrics = Metrics()
        with app_client(mock_config(data_dir=str(tmp_path)), metrics=metrics) as client:
            run_id = new_run(client)
            for i in range(2):
                http_run_step(client, run_id, llm_step(f"h-{i}"))
        counts = samples(metrics, "http_request_duration_ms_count")
        assert counts[(("method", "GET"), ("route", "/v1/steps/{step_id}/stream"),
                       ("status", "200"))] == 2.0
        assert sorted(dict(k)["route"] for k in counts) == [
            "/v1/flows", "/v1/flows/{flow_id}/runs", "/v1/runs/{run_id}/steps",
            "/v1/steps/{step_id}/stream"]


class TestScrape:
    """Scraping is read-only."""

    @pytest.mark.parametrize("scrapes", [1, 3])
    def test_scraping_moves_no_counter(self, tmp_path: pathlib.Path, scrapes: int) -> None:
        """Every counter and histogram sample is the same before and after scrapes of
        /metrics, though other requests are observed (process_cpu_seconds_total, the
        process's own CPU clock, aside)."""
        metrics = Metrics()
        with app_client(mock_config(data_dir=str(tmp_path)), metrics=metrics) as client:
            http_run_step(client, new_run(client), llm_step("s-1"))

            def moving() -> dict[str, float]:
                return {f"{s.name}{sorted(s.labels.items())}": s.value
                        for fam in metrics.registry.collect()
                        if fam.type in ("counter", "histogram")
                        and fam.name != "process_cpu_seconds"
                        for s in fam.samples if not s.name.endswith("_created")}

            before = moving()
            stream_route = ("http_request_duration_ms_count[('method', 'GET'), ('route', "
                            "'/v1/steps/{step_id}/stream'), ('status', '200')]")
            assert before[stream_route] == 1.0  # other requests are observed
            for _ in range(scrapes):
                assert client.get("/metrics").status_code == 200
            after = moving()
        assert {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v} == {}
