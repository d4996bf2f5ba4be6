"""``python -m tools.bench.facade`` measures every path it names ([OAI-6001])."""

from __future__ import annotations

import pathlib

import anyio

from tools.bench.facade import measure_facade
from tools.servers import start_server, stop_server


def test_the_facade_bench_times_every_path(tmp_path: pathlib.Path) -> None:
    """One round of two requests per path gives a positive p50 for each of the four
    paths, and the added figures are their differences."""
    proc, url = start_server(mock=True, data_dir=str(tmp_path))
    try:
        report = anyio.run(measure_facade, url, 1, 2, 4)
    finally:
        assert stop_server(proc) == 0
    paths = (report.native, report.native_one_trip, report.facade, report.facade_stream)
    assert [len(p.samples_ms[0]) for p in paths] == [2, 2, 2, 2]
    assert all(p.p50_ms > 0 for p in paths)
    assert report.added_p50_ms == round(report.facade.p50_ms - report.native.p50_ms, 3)
    assert report.added_over_one_trip_p50_ms == \
        round(report.facade_stream.p50_ms - report.native_one_trip.p50_ms, 3)
