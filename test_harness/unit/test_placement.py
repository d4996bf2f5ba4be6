"""Placement: auto, pin, affinity with a deterministic tie-break (PLACE-5001)."""

from __future__ import annotations

import pathlib

import msgspec
import pytest

from contracts.errors import InvalidModel, PoolUnavailable, PoolUnready
from contracts.pools import ReplicaHealth
from contracts.runs import PlacementAffinity, PlacementAuto, PlacementPin
from orchestrator_core.config import mock_config
from orchestrator_core.placement import place
from orchestrator_core.pools import Pool, PoolManager
from worker_adapters.mock import mock_identity

MODEL = "mock:echo-1"


@pytest.fixture
def pools(tmp_path: pathlib.Path) -> PoolManager:
    """Two pools of 2 replicas x 2 slots, all ready, without starting engines."""
    cfg = mock_config(replicas=2, slots_per_replica=2)
    gpu = msgspec.structs.replace(cfg.pools[0], pool_id="mock-1",
                                  tags={"device": "gpu"}, kind="gpu")
    pm = PoolManager(msgspec.structs.replace(cfg, pools=[cfg.pools[0], gpu]), tmp_path, {})
    for pc in pm.config.pools:
        pool = Pool(pc, mock_identity())
        for r in pool.replicas:
            r.health = ReplicaHealth.READY
        pm.pools[pc.pool_id] = pool
    return pm


class TestAuto:
    """Least loaded ready replica; ties by free slots desc, then replica_id asc."""

    def test_idle_replicas_tie_break_on_replica_id(self, pools: PoolManager) -> None:
        """All idle: the smallest replica_id wins, every time."""
        picks = {place(pools, MODEL, PlacementAuto())[1].replica_id for _ in range(5)}
        assert picks == {"mock-0/r0"}

    def test_the_replica_with_most_free_slots_wins(self, pools: PoolManager) -> None:
        """Busy replicas lose to idle ones."""
        pools.pools["mock-0"].replicas[0].busy = 1
        pools.pools["mock-1"].replicas[0].busy = 2
        _pool, rep, decision = place(pools, MODEL, None)
        assert (rep.replica_id, decision.strategy) == ("mock-0/r1", "auto")

    def test_unready_replicas_are_skipped(self, pools: PoolManager) -> None:
        """Only READY replicas are candidates; none ready is POOL_UNREADY."""
        for r in pools.all_replicas():
            r.health = ReplicaHealth.UNHEALTHY
        with pytest.raises(PoolUnready):
            place(pools, MODEL, None)

    def test_an_unknown_model_is_invalid(self, pools: PoolManager) -> None:
        """The model must be advertised."""
        with pytest.raises(InvalidModel):
            place(pools, "hf:other", None)


class TestPinAndAffinity:
    """pin never falls back; affinity filters pools by tags."""

    def test_pin_to_a_pool_stays_in_that_pool(self, pools: PoolManager) -> None:
        """Even when another pool is idler."""
        for r in pools.pools["mock-0"].replicas:
            r.busy = 2
        _p, rep, d = place(pools, MODEL, PlacementPin(pool_id="mock-0"))
        assert (rep.pool_id, d.strategy) == ("mock-0", "pin")

    def test_pin_to_an_unready_replica_fails(self, pools: PoolManager) -> None:
        """No fallback to its healthy sibling."""
        pools.pools["mock-1"].replicas[1].health = ReplicaHealth.STARTING
        with pytest.raises(PoolUnready):
            place(pools, MODEL, PlacementPin(pool_id="mock-1", replica_id="mock-1/r1"))

    def test_pin_to_an_unknown_replica_fails(self, pools: PoolManager) -> None:
        """A typed error names the replica."""
        with pytest.raises(PoolUnavailable) as info:
            place(pools, MODEL, PlacementPin(pool_id="mock-1", replica_id="mock-1/r9"))
        assert info.value.data == {"replica_id": "mock-1/r9"}

    def test_affinity_keeps_matching_pools(self, pools: PoolManager) -> None:
        """Only pools whose tags match are candidates."""
        _p, rep, d = place(pools, MODEL, PlacementAffinity(tags={"device": "gpu"}))
        assert (rep.replica_id, d.strategy) == ("mock-1/r0", "affinity")
