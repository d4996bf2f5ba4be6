"""The public view of an engine replica names no way into the engine.

[PLACE-5009] ``GET /v1/pools`` shows each replica's health, load and process id, never
its engine URL or port: that port bypasses recording, budgets, policy and metrics.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.clock import FakeClock
from orchestrator_core.config import mock_config
from orchestrator_core.pools import Replica
from test_harness.support import app_client


class _Process:
    """A local engine process as the pool manager sees it."""

    pid = 4242
    url = "http://127.0.0.1:18001"


class TestReplicaView:
    """What the pools view tells about a replica."""

    def test_a_local_replica_view_has_its_pid_but_not_its_url(self) -> None:
        """[PLACE-5009] A replica with a local engine process shows its pid, and its
        view holds neither the engine URL nor the port."""
        replica = Replica("cpu-0", 0, 1, CircuitBreaker("cpu-0/r0", FakeClock()))
        replica.process = _Process()  # type: ignore[assignment]
        view: dict[str, Any] = msgspec.to_builtins(replica.info())
        assert view == {"replica_id": "cpu-0/r0", "health": "starting", "slots": 1,
                        "busy": 0, "queued": 0, "restarts": 0, "requests": 0,
                        "tokens_generated": 0, "breaker": "closed", "breaker_failures": 0,
                        "pid": 4242}
        assert "18001" not in msgspec.json.encode(view).decode()

    def test_get_pools_names_no_url_field(self) -> None:
        """[PLACE-5009] ``GET /v1/pools`` answers replicas with exactly the public
        fields: no ``url``."""
        with app_client(mock_config()) as client:
            replicas = client.get("/v1/pools").json()[0]["replicas"]
        assert sorted(replicas[0]) == [
            "breaker", "breaker_failures", "busy", "health", "pid", "queued",
            "replica_id", "requests", "restarts", "slots", "tokens_generated"]
