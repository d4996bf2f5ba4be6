"""``checkpoint``: snapshot the interpreter state with the server's cursor (NERVE-4005).

Admission refuses a snapshot over ``max_recorded_value_bytes`` (POLICY-3030) before
anything is stored. The work stores the checkpoint (:mod:`orchestrator_core.checkpoints`),
logs a durable ``checkpoint`` frame and ends with ``{checkpoint_id, hash}``. A
``checkpoint`` Step is not executed again in either replay mode: the recording is served.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from contracts.checkpoints import CheckpointCreate
from contracts.events import CheckpointData
from contracts.runs import Run
from contracts.steps import CheckpointSubmit
from orchestrator_core.policy import check_allowed
from orchestrator_core.steps.base import (
    Admission,
    Done,
    Plan,
    ReplayRule,
    StepContext,
    StepRun,
    run_effect,
)

__all__ = ["KINDS", "Checkpoint"]


class Checkpoint:
    """``checkpoint`` Steps.

    Args:
        ctx: the step context (its ``checkpoints`` store them).
    """

    submits: ClassVar[tuple[type[msgspec.Struct], ...]] = (CheckpointSubmit,)
    replay: ClassVar[ReplayRule] = ReplayRule(record="stores the checkpoint")

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def check_policy(self, run: Run, body: CheckpointSubmit) -> None:
        """The Step type."""
        check_allowed(run.policy, step_type="checkpoint")

    async def admit(self, adm: Admission) -> Plan:
        """Check the snapshot's size.

        Raises:
            InvalidParams: the snapshot is over ``max_recorded_value_bytes``
                (``data.field`` ``input.snapshot``, POLICY-3030); nothing is stored.
        """
        ctx = self.ctx
        snapshot = adm.body.input.snapshot
        ctx.checkpoints.check_snapshot(snapshot, "input.snapshot")
        run_id, step_id = adm.run.run_id, adm.step_id

        async def call() -> Any:
            ckp, _created = ctx.checkpoints.create(
                run_id, CheckpointCreate(snapshot=snapshot), None, step_id=step_id)
            ctx.log.append(step_id, CheckpointData(checkpoint_id=ckp.checkpoint_id,
                                                   hash=ckp.hash))
            return {"checkpoint_id": ckp.checkpoint_id, "hash": ckp.hash}

        async def execute(sr: StepRun) -> Done:
            return await run_effect(sr, ctx.clock, call, executor="checkpoint")

        return Plan(execute=execute, executor="checkpoint")


KINDS = (Checkpoint,)
"""The Step types of this module (the registry finds them here)."""
