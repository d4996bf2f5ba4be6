"""What the Step helpers (effects, facts, checkpoints) see of the orchestrator (PLACE-5006).

They are typed against this Protocol, not against ``orchestrator_core.service``, so that
no module of the core imports the service (the service imports them).
"""

from __future__ import annotations

from typing import Any, Protocol

from contracts.flows import Flow
from contracts.runs import Run
from contracts.steps import Step, StepSubmit
from orchestrator_core.clock import Clock
from orchestrator_core.config import ServerConfig
from orchestrator_core.eventlog import EventLog
from orchestrator_core.executor import Executor
from orchestrator_core.metrics import Metrics
from orchestrator_core.store_base import Store

__all__ = ["StepHost"]


class StepHost(Protocol):
    """The orchestrator's state and Step lifecycle, as its helpers use them.

    ``tenant=None`` in the lookups is the server's own, unscoped view; a tenant's view
    raises ``NotFound`` for another tenant's ids, as for unknown ones.
    """

    config: ServerConfig
    clock: Clock
    store: Store
    log: EventLog
    executor: Executor
    metrics: Metrics

    def get_flow(self, flow_id: str, tenant: str | None = ...) -> Flow:
        """The Flow (raises ``NotFound``)."""
        ...

    def get_run(self, run_id: str, tenant: str | None = ...) -> Run:
        """The Run with its usage (raises ``NotFound``)."""
        ...

    def get_step(self, step_id: str, tenant: str | None = ...) -> Step:
        """The Step resource (raises ``NotFound``)."""
        ...

    def insert_step(self, run: Run, body: StepSubmit, step_type: str, input_value: Any,
                    input_hash: str, seed: int | None, replay_of_step: str | None,
                    step_id: str | None = None) -> str:
        """Store a new ``queued`` Step and return its id."""
        ...

    def spawn(self, fn: Any, job: Any) -> None:
        """Run ``fn(job)`` as a Step task in the orchestrator's task group."""
        ...
