"""``python -m tools.bench.facade`` measures every path it names ([OAI-6001], [OAI-6009]),
the engine called directly included, on the mock and on the real engine."""

from __future__ import annotations

import pathlib

import anyio
import pytest

from test_harness.support import REAL_MODEL
from tools.bench.facade import FacadeReport, measure_facade
from tools.servers import start_server, stop_server


def _measure(tmp_path: pathlib.Path, mock: bool) -> FacadeReport:
    proc, url = start_server(mock=mock, data_dir=str(tmp_path))
    try:
        return anyio.run(measure_facade, url, 1, 2, 4)
    finally:
        assert stop_server(proc) == 0


def _check(report: FacadeReport) -> None:
    paths = (report.native, report.native_one_trip, report.facade, report.facade_stream,
             report.engine_direct)
    assert [len(p.samples_ms[0]) if p else 0 for p in paths] == [2, 2, 2, 2, 2]
    assert all(p is not None and p.p50_ms > 0 for p in paths)
    assert report.engine_direct is not None
    assert report.added_over_engine_p50_ms == \
        round(report.facade.p50_ms - report.engine_direct.p50_ms, 3)
    assert report.added_stream_over_engine_p50_ms == \
        round(report.facade_stream.p50_ms - report.engine_direct.p50_ms, 3)


def test_the_facade_bench_times_every_path(tmp_path: pathlib.Path) -> None:
    """[OAI-6009] One round of two requests per path gives a positive p50 for each of
    the five paths (the mock engine run in-process as the direct one), and the added
    figures are their differences."""
    report = _measure(tmp_path, mock=True)
    _check(report)
    assert (report.model, report.engine_direct_kind) == ("mock:echo-1", "in-process mock")
    assert report.added_p50_ms == round(report.facade.p50_ms - report.native.p50_ms, 3)
    assert report.added_over_one_trip_p50_ms == \
        round(report.facade_stream.p50_ms - report.native_one_trip.p50_ms, 3)


@pytest.mark.engine
def test_on_the_real_engine_the_direct_path_is_the_replica(tmp_path: pathlib.Path) -> None:
    """[OAI-6009] On llama.cpp the engine-direct path is the replica's own loopback port,
    found from its pid, and every path is timed."""
    report = _measure(tmp_path, mock=False)
    _check(report)
    assert (report.model, report.engine_direct_kind) == (REAL_MODEL, "engine")
