"""``fs_op``: one file-system operation inside the Run's sandbox, through the FS broker
(POLICY-3001, POLICY-3002, POLICY-3010, POLICY-3012).

Admission needs sandbox roots in the Run's ``fs_policy``, a broker for them (the roots
still inside the tenant's directories, the policy within the operator's limits) and the
Run's file-system circuit breaker closed. The work runs the operation once, in
``record`` mode only, in a worker thread; the fs_ops of one Run run one at a time, each
holding the Run's lock until its ``end`` (which records the Run's cumulative usage, read
by the next one for its quotas) is committed. Repeated violations open the Run's
breaker. Replays serve the recorded result and never touch the file system.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import msgspec

from contracts.errors import CircuitOpen, InvalidParams
from contracts.runs import Run
from contracts.steps import FsOpSubmit
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.fsbroker import FsOpInput, FsUsage
from orchestrator_core.policy import check_allowed
from orchestrator_core.steps.base import (
    Admission,
    Done,
    Plan,
    ReplayRule,
    StepContext,
    StepRun,
    new_breaker,
    run_effect,
)

__all__ = ["KINDS", "FsOp"]


class FsOp:
    """``fs_op`` Steps, with one breaker and one lock per Run.

    Args:
        ctx: the step context (its ``sandboxes`` hold the operator's limits).
    """

    submits: ClassVar[tuple[type[msgspec.Struct], ...]] = (FsOpSubmit,)
    replay: ClassVar[ReplayRule] = ReplayRule(
        record="runs the operation once through the FS broker")

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.breakers: dict[str, CircuitBreaker] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def check_policy(self, run: Run, body: FsOpSubmit) -> None:
        """The Step type and the operation."""
        check_allowed(run.policy, step_type="fs_op", fs_op=body.input.op)

    def _usage(self, run_id: str) -> FsUsage:
        """Cumulative usage recorded by the Run's last successful fs_op (its ``end``
        frame; an index lookup and one frame, whatever the Run's length, NERVE-4042)."""
        store = self.ctx.store
        row = store.last_step(run_id, "fs_op", "succeeded")
        if row is None:
            return FsUsage()
        for _seq, ftype, data in store.read_events(row.step_id, row.last_seq - 1):
            if ftype == "end":
                usage = msgspec.json.decode(data)["output"].get("fs_usage", {})
                return msgspec.convert(usage, FsUsage)
        return FsUsage()

    async def admit(self, adm: Admission) -> Plan:
        """Sandbox roots, a broker for them, the Run's breaker closed.

        Raises:
            InvalidParams: the Run has no sandbox roots, or its policy exceeds the limits.
            FsPolicyViolation: a root is no longer inside the tenant's directories.
            CircuitOpen: repeated violations opened the Run's file-system breaker.
        """
        ctx, run = self.ctx, adm.run
        if not run.fs_policy.roots:
            raise InvalidParams("this run's fs_policy has no roots; fs_op needs a sandbox",
                                data={"field": "fs_policy.roots"})
        row = ctx.store.get_run(run.run_id)
        assert row is not None
        broker = ctx.sandboxes.broker(run.fs_policy, row.tenant)
        run_id = run.run_id
        breaker = self.breakers.get(run_id)
        if breaker is None:
            breaker = self.breakers[run_id] = new_breaker(ctx, f"fs:{run_id}")
        if not breaker.peek():
            raise CircuitOpen("repeated file-system policy violations opened this run's "
                              "breaker", retry_after_ms=breaker.retry_after_ms(),
                              data={"run_id": run_id})
        op = msgspec.convert(msgspec.to_builtins(adm.body.input), FsOpInput)

        async def call() -> Any:
            ctx.metrics.fs_operations.labels(op=op.op).inc()
            usage = self._usage(run_id)
            result, after = await anyio.to_thread.run_sync(broker.execute, op, usage)
            return {**result, "fs_usage": msgspec.to_builtins(after)}

        async def execute(sr: StepRun) -> Done:
            return await run_effect(sr, ctx.clock, call, executor="fs", breaker=breaker)

        return Plan(execute=execute, executor="fs",
                    lock=self._locks.setdefault(run_id, anyio.Lock()))


KINDS = (FsOp,)
"""The Step types of this module (the registry finds them here)."""
