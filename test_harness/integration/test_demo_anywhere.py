"""The demo from any directory: same report, progress shown, inputs named.

[OBS-8071] ``python -m tools.demo --mock --json`` run from the repository and from an
unrelated directory summarises the same document and gives the same report (run ids,
times, the temporary sandbox path and the per-run checkpoint id aside); on stderr it
names the file it read and prints one line per mode and one per Step.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
PER_RUN = ("run_id", "wall_ms")


def demo(cwd: pathlib.Path) -> tuple[dict[str, Any], list[str]]:
    """Run the mock demo from ``cwd``: (report without per-run values, stderr lines)."""
    done = subprocess.run([sys.executable, "-m", "tools.demo", "--mock", "--json"], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300, check=True)
    report = json.loads(done.stdout)
    for key in ("replay_vs_record_time", "fs_root"):
        report.pop(key)
    report["outputs"].pop("checkpoint")
    report["modes"] = [{k: v for k, v in m.items() if k not in PER_RUN}
                       for m in report["modes"]]
    return report, done.stderr.splitlines()


class TestDemoAnywhere:
    """The demo's report does not depend on the current directory."""

    def test_same_report_from_the_repository_and_elsewhere(self, tmp_path: pathlib.Path) -> None:
        """The report from an unrelated directory equals the report from the repository,
        and stderr names the document read and shows every mode and Step."""
        here, _ = demo(ROOT)
        there, there_err = demo(tmp_path)
        assert there == here
        assert there["document"] == "specs/20_stream_and_replay.md"
        doc = ROOT / "specs" / "20_stream_and_replay.md"
        assert there_err[0] == f"read {doc} (the first 1500 characters)"
        steps = [ln.split()[:3] for ln in there_err if ln.startswith("  [")]
        names = ["summary", "plan", "act-0", "report", "gate", "checkpoint", "title"]
        types = ["llm_call", "llm_plan", "tool_call", "fs_op", "gate_eval", "checkpoint",
                 "llm_call"]
        assert steps == [[f"[{mode}]", n, t] for mode in ("record", "replay", "strict_replay")
                         for n, t in zip(names, types, strict=True)]
