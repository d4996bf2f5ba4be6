"""A sandbox root shared by a Run and its fork, and crash leftovers (POLICY-3012).

[POLICY-3012] Appends from two Runs naming the same root are serialised per file, so every
acknowledged append is in the file exactly once; the broker's temporary files left by a
crash are removed when the server starts.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from litestar.testing import TestClient

from orchestrator_core.config import ServerConfig
from test_harness.support import app_client, parse_sse

APPENDS_PER_RUN = 30


def _root(cfg: ServerConfig) -> pathlib.Path:
    return (pathlib.Path(cfg.data_dir) / "sandboxes" / "default" / "shared").resolve()


def _parent_and_fork(client: TestClient[Any], fs_policy: dict[str, Any]) -> list[str]:
    """A record Run with a checkpoint, and a Run forked from it; both name one root."""
    flow_id = client.post("/v1/flows", json={"ast_ir": {"shared": 1}}).json()["flow_id"]
    parent = client.post(f"/v1/flows/{flow_id}/runs",
                         json={"seed": 1, "fs_policy": fs_policy}).json()["run_id"]
    ckpt = client.post(f"/v1/runs/{parent}/checkpoint", json={"snapshot": {"at": 0}})
    assert ckpt.status_code == 201, ckpt.text
    fork = client.post(f"/v1/flows/{flow_id}/runs", json={
        "from_checkpoint": ckpt.json()["checkpoint_id"], "fs_policy": fs_policy})
    assert fork.status_code == 201, fork.text
    return [parent, fork.json()["run_id"]]


def _terminal(client: TestClient[Any], step_id: str) -> dict[str, Any]:
    with client.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        frames = [f for f in parse_sse(b"".join(s.iter_bytes())) if f["id"] is not None]
    return {"event": frames[-1]["event"], **json.loads(frames[-1]["data"])}


class TestSharedRoot:
    """A Run and its fork append to one file concurrently."""

    def test_every_acknowledged_append_is_in_the_file_exactly_once(
            self, mock_cfg: ServerConfig) -> None:
        """2 Runs x 30 appends, all in flight together: 60 ``end`` frames, 60 lines."""
        root = _root(mock_cfg)
        policy = {"roots": [str(root)], "allow": {"append": ["log.txt"]}}
        with app_client(mock_cfg) as client:
            runs = _parent_and_fork(client, policy)
            submitted = []
            for i in range(APPENDS_PER_RUN):
                for r, run_id in enumerate(runs):
                    line = f"run{r}-append{i}"
                    resp = client.post(f"/v1/runs/{run_id}/steps", json={
                        "type": "fs_op", "client_token": line,
                        "input": {"op": "append", "path": "log.txt", "content": line + "\n"}})
                    assert resp.status_code == 201, resp.text
                    submitted.append((line, resp.json()["step_id"]))
            acknowledged = sorted(line for line, step_id in submitted
                                  if _terminal(client, step_id)["event"] == "end")
        lines = (root / "log.txt").read_text().splitlines()
        assert (len(acknowledged), sorted(lines)) == (2 * APPENDS_PER_RUN, acknowledged)
        assert sorted(p.name for p in root.iterdir()) == ["log.txt"]


class TestRecovery:
    """Starting the server removes the temporary files a crash left in sandboxes."""

    def test_a_planted_temporary_file_is_removed_at_startup(
            self, mock_cfg: ServerConfig) -> None:
        """``.fsbroker-x.tmp`` goes; the file beside it and the tenant tree stay."""
        root = _root(mock_cfg)
        (root / "sub").mkdir(parents=True)
        (root / "sub" / ".fsbroker-x.tmp").write_text("half a write")
        (root / "sub" / "kept.txt").write_text("kept")
        with app_client(mock_cfg) as client:
            assert client.get("/ready").status_code == 200
        assert sorted(p.name for p in (root / "sub").iterdir()) == ["kept.txt"]
