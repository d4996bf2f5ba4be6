"""The history bench: its offline fill and its ratio table (NERVE-4042)."""

from __future__ import annotations

import pathlib
from typing import cast

import msgspec

from orchestrator_core.store import SqliteStore
from orchestratord.client import OrchestratorClient
from test_harness.unit.conftest import seeded
from tools.bench.history import (
    HistoryReport,
    Ratio,
    _figures,
    _paths,
    _ratio,
    _Target,
    render_text,
)
from tools.bench.history_fill import FillPlan, FillReport, fill_store

_NO_CLIENT = cast(OrchestratorClient, None)  # these targets never send anything


def _target(name: str, step: list[float], get: list[float], before: int = 0) -> _Target:
    return _Target(name, _NO_CLIENT, "run", before, [step], [get])


class TestHistoryTable:
    """The bench pools the empty store's fresh Runs and divides p50s and p99s."""

    def test_the_empty_stores_fresh_runs_are_pooled_and_each_path_divided(self) -> None:
        """[NERVE-4042] Two fresh Runs of the empty store make one path holding both
        Runs' samples; each long Run is divided by the big store's fresh Run, and that
        one by the empty store's."""
        paths = _paths([_target("fresh run, big store", [2.0, 4.0], [1.0, 1.0]),
                        _target("fresh run, empty store", [2.0], [1.0]),
                        _target("run of 10 steps", [3.0, 3.0], [1.0, 2.0], 10),
                        _target("fresh run, empty store", [4.0], [2.0])])
        assert [(p.name, p.steps_before, p.step.samples_ms, p.get_run.samples_ms)
                for p in paths] == [
            ("fresh run, empty store", 0, [[2.0, 4.0]], [[1.0, 2.0]]),
            ("fresh run, big store", 0, [[2.0, 4.0]], [[1.0, 1.0]]),
            ("run of 10 steps", 10, [[3.0, 3.0]], [[1.0, 2.0]])]
        assert [_ratio("10 / fresh", paths[2], paths[1]),
                _ratio("big / empty", paths[1], paths[0])] == [
            Ratio(name="10 / fresh", step_p50=1.0, step_p99=0.75, get_p50=1.5, get_p99=2.0),
            Ratio(name="big / empty", step_p50=1.0, step_p99=1.0, get_p50=0.667,
                  get_p99=0.5)]

    def test_a_ratio_over_the_target_is_marked_and_fails_its_figure(self) -> None:
        """[NERVE-4042] The text marks each ratio over the target with ``*``; the figures
        carry every ratio and a check that is 0 when one is over."""
        paths = _paths([_target("fresh run, big store", [2.0], [1.0]),
                        _target("fresh run, empty store", [2.0], [1.0]),
                        _target("run of 10 steps", [3.0], [1.0], 10)])
        ratios = [_ratio("run of 10 steps / fresh run", paths[2], paths[1])]
        figures = _figures(paths, ratios, 1.2, True)
        report = HistoryReport(
            quick=True, rounds=1, per_round=1, max_tokens=8,
            fill=FillReport(long_run_ids=[], runs=1, steps=1, events=10,
                            frames_per_step=10, seconds=0.1),
            http_filled={"10": 0.1}, paths=paths, ratios=ratios, target=1.2,
            usage_checked=True, figures=figures)
        assert "   run of 10 steps / fresh run           1.500*    1.500*    1.000     1.000" \
            in render_text(report).splitlines()
        assert [f for f in figures if f["unit"] != "ms"] == [
            {"name": f"history: run of 10 steps / fresh run, {k}", "unit": "x",
             "direction": "lower-is-better", "value": v}
            for k, v in (("step p50", 1.5), ("step p99", 1.5), ("get p50", 1.0),
                         ("get p99", 1.0))] + [
            {"name": "history: every ratio within the target", "unit": "check",
             "direction": "higher-is-better", "value": 0.0},
            {"name": "history: long runs read back their steps", "unit": "check",
             "direction": "higher-is-better", "value": 1.0}]


class TestHistoryFill:
    """The offline fill copies a template Step, frames included, through the store."""

    def test_the_fill_adds_long_runs_and_filler_runs_up_to_the_plan(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4042] A Run of 3 Steps and filler Runs up to 5 Runs and 40 frames, each
        Step a succeeded copy of the template with its 2 frames, and the usage counters
        agreeing with the recount."""
        store = seeded(SqliteStore(tmp_path / "o.db"))
        store.commit_events([("s", 0, "r", "started", b"{}"), ("s", 1, "r", "end", b"{}")],
                            [("s", {"status": "succeeded", "tokens_out": 4, "last_seq": 1})])
        store.close()
        report = fill_store(tmp_path / "o.db", "r", "s",
                            FillPlan(long_runs=[3], runs_total=5, events_total=40))
        store = SqliteStore(tmp_path / "o.db")
        (long_id,) = report.long_run_ids
        steps = store.list_steps(long_id)
        usage = store.run_usage(long_id)
        integrity = store.integrity()
        frames = store.read_events(steps[-1].step_id, -1)
        store.close()
        assert msgspec.structs.replace(report, long_run_ids=[], seconds=0.0) == FillReport(
            long_run_ids=[], runs=5, steps=20, events=40, frames_per_step=2, seconds=0.0)
        assert [(s.client_token, s.status, s.ordinal, s.last_seq) for s in steps] == [
            ("fill-0", "succeeded", 0, 1), ("fill-1", "succeeded", 1, 1),
            ("fill-2", "succeeded", 2, 1)]
        assert (usage.tokens_out, usage.counts) == (12, {"succeeded": 3})
        assert frames == [(0, "started", b"{}"), (1, "end", b"{}")]
        assert integrity["usage_mismatch"] == 0
