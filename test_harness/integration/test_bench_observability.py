"""``python -m tools.bench.observability`` measures the three servers side by side and
reports each one's difference from the server with tracing and logging off (OBS-8030)."""

from __future__ import annotations

import json
import subprocess
import sys

from tools.bench.observability import (
    ObservabilityReport,
    VariantResult,
    render_text,
)
from tools.bench.stats import summarise


class TestObservabilityBench:
    """A short real run, and the table it prints."""

    def test_a_short_run_reports_every_variant_against_off(self) -> None:
        """[OBS-8030] Three servers, alternated; ``off`` adds 0 by definition; the
        traced server's log held a Step span (the run fails otherwise)."""
        out = subprocess.run(
            [sys.executable, "-m", "tools.bench.observability", "--rounds", "1",
             "--per-round", "3", "--warmup", "1", "--max-tokens", "2", "--json"],
            capture_output=True, text=True, timeout=300, check=True)
        report = json.loads(out.stdout)
        assert [(v["name"], len(v["stats"]["samples_ms"][0])) for v in report["variants"]] \
            == [("off", 3), ("logs", 3), ("logs+traces", 3)]
        assert (report["variants"][0]["added_p50_ms"],
                report["variants"][0]["added_p99_ms"]) == (0.0, 0.0)

    def test_the_table_puts_the_added_latency_beside_each_server(self) -> None:
        """[OBS-8030] One row per server: p50, p99 and both differences, in ms."""
        stats = [summarise([[1.0, 2.0, 3.0]]), summarise([[1.5, 2.5, 3.5]])]
        report = ObservabilityReport(rounds=1, per_round=3, max_tokens=16, variants=[
            VariantResult(name="off", stats=stats[0], added_p50_ms=0.0, added_p99_ms=0.0),
            VariantResult(name="logs", stats=stats[1], added_p50_ms=0.5, added_p99_ms=0.5)])
        assert render_text(report).splitlines()[2:] == [
            "   server                     p50 ms   p99 ms   +p50 ms   +p99 ms",
            "   off                         2.000    3.000     0.000     0.000",
            "   logs                        2.500    3.500     0.500     0.500"]
