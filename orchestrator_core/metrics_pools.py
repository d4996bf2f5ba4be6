"""Where the task metrics are observed, and the pool gauges read at scrape time (OBS-8051).

The LLM Step's code calls the ``on_*`` functions at its few points of interest; each is
one line there. The gauges of current state (queue depth, replica health, breaker state,
pool readiness) are not kept up to date by the code that changes them: a
:class:`PoolCollector` reads them from the :class:`~orchestrator_core.pools.PoolManager`
when ``/metrics`` is scraped, so they can never drift from the pools' own view, and a
scrape moves no counter (OBS-8052).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from contracts.errors import OrchestratorError
from contracts.events import PlacementDecision
from contracts.pools import ReplicaHealth
from contracts.runs import Placement, PlacementPin
from orchestrator_core.metrics import PRIORITY, Metrics
from orchestrator_core.placement import place

if TYPE_CHECKING:
    from orchestrator_core.pools import Pool, PoolManager, Replica
    from orchestrator_core.steps.base import StepRun

__all__ = ["PoolCollector", "engine_of_model", "latency_labels", "on_rejected",
           "on_step_finished", "place_counted", "task_labels"]

_BREAKER_STATES = ("closed", "half_open", "open")


def task_labels(pools: PoolManager, pool_id: str, replica_id: str) -> dict[str, str]:
    """The ``engine, engine_version, pool_id, replica_id`` labels of a replica.

    ``engine`` is the pool's driver name (``llamacpp``, ``mock``, ``openai_http``), as in
    llama-orch; ``engine_version`` the engine's reported version. An unknown pool gives
    empty ``engine`` and ``engine_version``.
    """
    pool = pools.pools.get(pool_id)
    return {"engine": pool.config.engine if pool else "",
            "engine_version": pool.identity.version if pool else "",
            "pool_id": pool_id, "replica_id": replica_id}


def engine_of_model(pools: PoolManager, model: str) -> str:
    """The driver name of the first pool serving ``model``, or ``""`` when none does."""
    for pool in pools.pools.values():
        if model in pool.models:
            return pool.config.engine
    return ""


def on_rejected(metrics: Metrics, engine: str, err: OrchestratorError) -> None:
    """Count an LLM Step refused at admission: ``tasks_rejected_total{reason=<code>}``,
    and for a refusal for lack of room (``QUEUE_FULL``, ``ADMISSION_REJECT``) also
    ``admission_backpressure_events_total{policy="reject"}``; a placement refusal also
    counts in ``placement_decisions_total`` (the caller does that)."""
    code = err.code.value
    metrics.tasks_rejected.labels(engine=engine, reason=code).inc()
    if code in ("QUEUE_FULL", "ADMISSION_REJECT"):
        metrics.backpressure.labels(engine=engine, policy="reject").inc()


def place_counted(metrics: Metrics, pools: PoolManager, model: str,
                  placement: Placement | None) -> tuple[Pool, Replica, PlacementDecision]:
    """:func:`~orchestrator_core.placement.place`, counted in
    ``placement_decisions_total{outcome, pinned, fallback}``: ``outcome`` is ``placed``
    or the refusal's error code, ``pinned`` whether the Step named its replica, and
    ``fallback`` is always ``false`` (placement never falls back to another pool).

    Raises:
        Whatever :func:`~orchestrator_core.placement.place` raises.
    """
    pinned = "true" if isinstance(placement, PlacementPin) else "false"
    try:
        placed = place(pools, model, placement)
    except OrchestratorError as err:
        metrics.placement_decisions.labels(outcome=err.code.value, pinned=pinned,
                                           fallback="false").inc()
        raise
    metrics.placement_decisions.labels(outcome="placed", pinned=pinned, fallback="false").inc()
    return placed


def on_step_finished(metrics: Metrics, pools: PoolManager, sr: StepRun, now: float,
                     canceled_reason: str | None = None) -> None:
    """Count an LLM Step once, as its terminal frame is committed (OBS-8051, OBS-8053).

    ``tokens_in_total``/``tokens_out_total`` move by exactly the Step's recorded
    ``tokens_in``/``tokens_out``; ``latency_decode_ms`` observes its time in the engine
    stream and ``orchestrator_added_latency_ms`` its submit-to-terminal time minus that;
    a cancellation counts in ``tasks_canceled_total{reason=<error code>}``. A Step that
    runs no engine (or serves a recording) counts nothing here.

    Args:
        metrics: where to count.
        pools: for the engine labels of the Step's replica.
        sr: the ending Step.
        now: monotonic seconds at the terminal frame.
        canceled_reason: the error code when the Step was cancelled.
    """
    plan = sr.plan
    if plan is None or not plan.llm:
        return
    prov = sr.provenance
    labels = task_labels(pools, prov.pool_id or "", prov.replica_id or "")
    metrics.tokens_in.labels(**labels).inc(sr.tokens_in)
    metrics.tokens_out.labels(**labels).inc(sr.tokens_out)
    if canceled_reason is not None:
        metrics.tasks_canceled.labels(**labels, reason=canceled_reason).inc()
    engine_s = 0.0
    if sr.decode_started is not None:
        engine_s = (sr.decode_ended if sr.decode_ended is not None else now) - sr.decode_started
        metrics.decode_ms.labels(**latency_labels(labels)).observe(engine_s * 1000.0)
    metrics.added_latency_ms.labels(type=sr.step_type, mode=sr.mode).observe(
        max(0.0, now - sr.submitted_at - engine_s) * 1000.0)


def latency_labels(labels: dict[str, str]) -> dict[str, str]:
    """The latency histograms' labels from a replica's task labels."""
    return {"engine": labels["engine"], "engine_version": labels["engine_version"],
            "pool_id": labels["pool_id"], "priority": PRIORITY}


class PoolCollector(Collector):
    """Scrape-time gauges of the pools (OBS-8051).

    ``queue_depth{engine,engine_version,pool_id,priority}``: Steps waiting for a slot;
    ``pool_ready{pool_id}``: 1 when a replica is ready; ``replica_health{pool_id,
    replica_id,state}`` and ``replica_breaker_state{pool_id,replica_id,state}``: 1 for the
    current state, 0 for the others.
    """

    def __init__(self, pools: PoolManager) -> None:
        self.pools = pools

    def describe(self) -> list[GaugeMetricFamily]:
        """No families up front: the registry then calls :meth:`collect` per scrape."""
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One family of each gauge, with a sample per pool or replica."""
        depth = GaugeMetricFamily("queue_depth", "Steps waiting for a replica slot",
                                  labels=["engine", "engine_version", "pool_id", "priority"])
        ready = GaugeMetricFamily("pool_ready", "1 when the pool has a ready replica",
                                  labels=["pool_id"])
        health = GaugeMetricFamily("replica_health", "1 for the replica's current state",
                                   labels=["pool_id", "replica_id", "state"])
        breaker = GaugeMetricFamily("replica_breaker_state",
                                    "1 for the replica breaker's current state",
                                    labels=["pool_id", "replica_id", "state"])
        for pool in list(self.pools.pools.values()):
            self._pool(pool, depth, ready, health, breaker)
        yield from (depth, ready, health, breaker)

    @staticmethod
    def _pool(pool: Pool, depth: GaugeMetricFamily, ready: GaugeMetricFamily,
              health: GaugeMetricFamily, breaker: GaugeMetricFamily) -> None:
        pid = pool.pool_id
        depth.add_metric([pool.config.engine, pool.identity.version, pid, PRIORITY],
                         pool.queued())
        ready.add_metric([pid], float(any(r.health is ReplicaHealth.READY
                                          for r in pool.replicas)))
        for rep in pool.replicas:
            for state in ReplicaHealth:
                health.add_metric([pid, rep.replica_id, state.value],
                                  float(rep.health is state))
            for bstate in _BREAKER_STATES:
                breaker.add_metric([pid, rep.replica_id, bstate],
                                   float(rep.breaker.state.value == bstate))
