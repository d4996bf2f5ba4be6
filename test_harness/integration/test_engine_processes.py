"""Engine replicas are child processes that never outlive the server (PLACE-5002).

On the real llama.cpp engine: a normal shutdown (SIGTERM or Ctrl-C) stops every replica,
and even ``kill -9`` of the server leaves none behind (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import pathlib
import signal
import time

import httpx
import pytest

from test_harness.support import pid_alive
from tools.servers import start_server

pytestmark = pytest.mark.engine


def _replica_pids(url: str) -> list[int]:
    pools = httpx.get(url + "/v1/pools", timeout=10).json()
    return [r["pid"] for p in pools for r in p["replicas"]]


def _wait_dead(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if pid_alive(p)]


class TestEngineProcesses:
    """No engine process is left behind, however the server stops."""

    @pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
    def test_a_normal_shutdown_stops_every_replica(self, tmp_path: pathlib.Path,
                                                   sig: signal.Signals) -> None:
        """SIGTERM and Ctrl-C: the server exits 0 and its replicas are gone."""
        proc, url = start_server(data_dir=str(tmp_path))
        pids = _replica_pids(url)
        assert len(pids) == 1 and all(pid_alive(p) for p in pids)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
        assert _wait_dead(pids) == []

    def test_kill_9_of_the_server_leaves_no_replica(self, tmp_path: pathlib.Path) -> None:
        """The kernel kills the replicas with their parent."""
        proc, url = start_server(data_dir=str(tmp_path))
        pids = _replica_pids(url)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert _wait_dead(pids) == []

    def test_a_dead_replica_is_restarted(self, tmp_path: pathlib.Path) -> None:
        """The pool manager notices a dead replica and starts it again."""
        proc, url = start_server(data_dir=str(tmp_path))
        try:
            (pid,) = _replica_pids(url)
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            rep: dict[str, object] = {}
            while time.monotonic() < deadline:
                rep = httpx.get(url + "/v1/pools", timeout=10).json()[0]["replicas"][0]
                if rep["restarts"] == 1 and rep["health"] == "ready":
                    break
                time.sleep(0.1)
            assert (rep["restarts"], rep["health"]) == (1, "ready")
            assert rep["pid"] != pid
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
