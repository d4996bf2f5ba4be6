"""Prometheus metrics of the orchestrator, on an injectable registry (tests use a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    """Every metric the server exports.

    Attributes:
        sse_dropped: ephemeral frames dropped for slow readers, by frame type (STREAM-2003).
        group_commits: event-log transactions; ``events_committed`` counts their rows.
        steps_finished: Steps that reached a terminal status, by type and status.
        engine_requests: requests sent to engines, by pool.
        tool_executions: tool executor invocations, by executor (NERVE-4011).
        fs_operations: operations the FS broker performed or refused, by op (POLICY-3001).
        step_latency: submit-to-terminal seconds, by type and mode.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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
