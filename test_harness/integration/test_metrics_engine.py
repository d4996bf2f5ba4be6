"""tokens_out_total on the real engine (llama.cpp, SmolLM2-135M).

[OBS-8053] one real llm_call Step moves ``tokens_out_total`` by exactly the
``tokens_out`` recorded in its end frame's provenance, and ``tokens_in_total`` by its
``tokens_in``. The mock twin is in ``test_harness/unit/test_metrics_contract.py``.
"""

from __future__ import annotations

import json
import pathlib

import pytest

from orchestrator_core.config import default_config
from orchestrator_core.metrics import Metrics
from test_harness.support import REAL_MODEL, app_client, http_run_step, llm_step

pytestmark = pytest.mark.engine


class TestRealEngineTokens:
    """Token counters against one real decode."""

    def test_one_real_step_moves_tokens_out_by_its_tokens_out(
            self, tmp_path: pathlib.Path) -> None:
        """A real llm_call Step moves tokens_out_total and tokens_in_total by exactly its
        recorded tokens_out and tokens_in."""
        metrics = Metrics()
        with app_client(default_config(data_dir=str(tmp_path)), metrics=metrics) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {}}).json()
            run_id = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
            _resp, frames = http_run_step(client, run_id, llm_step(
                "real-1", prompt="Name three colours.", model=REAL_MODEL, max_tokens=24,
                temperature=0.0))
        prov = json.loads(frames[-1]["data"])["provenance"]

        def total(name: str) -> float:
            return sum(s.value for fam in metrics.registry.collect() for s in fam.samples
                       if s.name == name)

        assert (frames[-1]["event"], prov["tokens_out"] > 0) == ("end", True)
        assert (total("tokens_out_total"), total("tokens_in_total")) == (
            float(prov["tokens_out"]), float(prov["tokens_in"]))
