"""Prometheus metrics of the orchestrator, on an injectable registry (tests use a fresh one).

The names, types and label sets are a contract, committed in ``contracts/metrics.json``
and pinned both ways by ``test_harness/unit/test_metrics_contract.py`` (OBS-8050). The
task metrics follow llama-orch's metrics contract (``.specs/metrics/otel-prom.md`` and
``ci/metrics.lint.json``): same names, same label sets, same cardinality budgets.
Gauges that describe current state (queue depth, replica health, breaker state) are read
from the pools when scraped, by :class:`orchestrator_core.metrics_pools.PoolCollector`,
so a scrape never moves a counter (OBS-8052).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

__all__ = ["LATENCY_BUCKETS_MS", "PRIORITY", "Metrics"]

LATENCY_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0,
                      2_500.0, 5_000.0, 10_000.0, 30_000.0, 60_000.0)
"""Histogram buckets of the ``*_ms`` latencies, in milliseconds."""

PRIORITY = "interactive"
"""The ``priority`` label value: this server has one priority class (OBS-8051)."""

_TASK = ["engine", "engine_version", "pool_id", "replica_id"]
_LATENCY = ["engine", "engine_version", "pool_id", "priority"]


class Metrics:
    """Every metric the server exports.

    Attributes:
        sse_dropped: ephemeral frames dropped for slow readers, by frame type (STREAM-2003).
        group_commits: event-log transactions; ``events_committed`` counts their rows.
        steps_finished: Steps that reached a terminal status, by type and status.
        steps_served: Steps stored already finished, served by reference to another
            Step's frames, by type and ``source``: ``recorded`` (a replay),
            ``inherited`` (a fork's parent) or ``cached`` (an exact-match cache hit,
            REC-7103).
        engine_requests: requests sent to engines, by pool.
        tool_executions: tool executor invocations, by executor (NERVE-4011).
        fs_operations: operations the FS broker performed or refused, by op (POLICY-3001).
        step_latency: submit-to-terminal seconds, by type and mode.
        tasks_enqueued / tasks_started / tasks_canceled / tasks_rejected: LLM Steps
            queued on a replica, given a slot, cancelled, refused at admission (OBS-8051).
        tokens_in / tokens_out: prompt and sampled tokens of LLM Steps, counted once
            when the Step ends, equal to its recorded ``tokens_in``/``tokens_out``.
        backpressure: admission refusals for lack of room (``policy="reject"``).
        placement_decisions: placement outcomes (``placed`` or the refusal's code).
        first_token_ms / decode_ms: submit-to-first-token and decode time (ms).
        added_latency_ms: submit-to-terminal time minus time in the engine stream (ms),
            per LLM Step: what the orchestrator adds (OBS-8053).
        http_duration_ms: HTTP request time by method, route template and status (ms).
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 process: bool = True) -> None:
        """Create every metric on ``registry`` (default: a fresh one).

        Args:
            registry: where the metrics register.
            process: also register prometheus_client's process collector (``process_*``,
                Linux only; OBS-8051).
        """
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sse_dropped = Counter("orchestrator_sse_dropped_frames", "Ephemeral frames "
                                   "dropped for slow SSE readers", ["frame_type"], registry=r)
        self.group_commits = Counter("orchestrator_event_group_commits",
                                     "Event-log transactions", registry=r)
        self.events_committed = Counter("orchestrator_events_committed",
                                        "Durable frames committed", registry=r)
        self.steps_finished = Counter("orchestrator_steps_finished", "Steps that ended",
                                      ["type", "status"], registry=r)
        self.steps_served = Counter("orchestrator_steps_served", "Steps served by reference "
                                    "to a recorded, inherited or cached Step",
                                    ["type", "source"], registry=r)
        self.engine_requests = Counter("orchestrator_engine_requests",
                                       "Requests sent to engines", ["pool_id"], registry=r)
        self.tool_executions = Counter("orchestrator_tool_executions",
                                       "Tool executor invocations", ["executor"], registry=r)
        self.fs_operations = Counter("orchestrator_fs_operations",
                                     "File-system operations run by the FS broker", ["op"],
                                     registry=r)
        self.sse_subscribers = Gauge("orchestrator_sse_subscribers",
                                     "Open SSE step subscriptions", registry=r)
        self.step_latency = Histogram("orchestrator_step_seconds",
                                      "Submit-to-terminal time", ["type", "mode"], registry=r)
        self.tasks_enqueued = Counter("tasks_enqueued_total", "LLM Steps queued on a replica",
                                      [*_TASK, "priority"], registry=r)
        self.tasks_started = Counter("tasks_started_total", "LLM Steps given a replica slot",
                                     [*_TASK, "priority"], registry=r)
        self.tasks_canceled = Counter("tasks_canceled_total", "LLM Steps cancelled",
                                      [*_TASK, "reason"], registry=r)
        self.tasks_rejected = Counter("tasks_rejected_total",
                                      "LLM Steps refused at admission, by error code",
                                      ["engine", "reason"], registry=r)
        self.tokens_in = Counter("tokens_in_total", "Prompt tokens of LLM Steps", _TASK,
                                 registry=r)
        self.tokens_out = Counter("tokens_out_total", "Tokens sampled by LLM Steps", _TASK,
                                  registry=r)
        self.backpressure = Counter("admission_backpressure_events_total",
                                    "Admission refusals for lack of room",
                                    ["engine", "policy"], registry=r)
        self.placement_decisions = Counter("placement_decisions_total",
                                           "Placement decisions by outcome",
                                           ["outcome", "pinned", "fallback"], registry=r)
        self.first_token_ms = Histogram("latency_first_token_ms",
                                        "Submit to first token, milliseconds", _LATENCY,
                                        buckets=LATENCY_BUCKETS_MS, registry=r)
        self.decode_ms = Histogram("latency_decode_ms",
                                   "Decode time of the whole stream, milliseconds",
                                   _LATENCY, buckets=LATENCY_BUCKETS_MS, registry=r)
        self.added_latency_ms = Histogram(
            "orchestrator_added_latency_ms",
            "Submit-to-terminal time minus time in the engine stream, milliseconds",
            ["type", "mode"], buckets=LATENCY_BUCKETS_MS, registry=r)
        self.http_duration_ms = Histogram(
            "http_request_duration_ms", "HTTP request time by route template, milliseconds",
            ["method", "route", "status"], buckets=LATENCY_BUCKETS_MS, registry=r)
        if process:
            ProcessCollector(registry=r)
