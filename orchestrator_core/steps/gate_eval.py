"""``gate_eval``: a JMESPath expression over the Run's Facts (NERVE-4006, NERVE-4007).

Admission compiles the expression within its length and depth limits. The work evaluates
it over the Run's Facts and, while it fails, waits for new Facts up to ``wait_ms``; it
records whether it passed, the value, the ids of the Facts it saw and their high-water
mark. Each evaluation runs on a work budget in a worker thread
(:mod:`orchestrator_core.gates`). ``gate_eval`` is pure: ``strict_replay`` evaluates it
again over exactly the recorded Facts and must agree with the recording
(``REPLAY_DIVERGED`` otherwise); ``replay`` serves the recording.
"""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import msgspec

from contracts.errors import ReplayDiverged
from contracts.runs import Run
from contracts.steps import GateEvalSubmit
from orchestrator_core.facts import fact_of
from orchestrator_core.gates import GateExpression, compile_gate, evaluate_gate
from orchestrator_core.policy import check_allowed
from orchestrator_core.rows import FactRow
from orchestrator_core.steps.base import (
    Admission,
    Done,
    Plan,
    ReplayRule,
    StepContext,
    StepRun,
    run_effect,
)

__all__ = ["KINDS", "GateEval"]


def _evaluate(gate: GateExpression, rows: list[FactRow], max_work: int,
              max_value_bytes: int) -> tuple[list[str], bool, Any]:
    """Decode the Facts and evaluate the gate over them (pure; runs in a worker thread)."""
    facts = [msgspec.to_builtins(fact_of(r)) for r in rows]
    passed, value = evaluate_gate(gate, facts, max_work=max_work,
                                  max_value_bytes=max_value_bytes)
    return [f["fact_id"] for f in facts], passed, value


class GateEval:
    """``gate_eval`` Steps.

    Args:
        ctx: the step context (the store's Facts, ``facts.wait_for_new``).
    """

    submits: ClassVar[tuple[type[msgspec.Struct], ...]] = (GateEvalSubmit,)
    replay: ClassVar[ReplayRule] = ReplayRule(
        record="evaluates over the Run's Facts, waiting up to wait_ms for them",
        strict_replay="evaluates again over the recorded Facts and compares",
        reruns=True)

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def check_policy(self, run: Run, body: GateEvalSubmit) -> None:
        """The Step type."""
        check_allowed(run.policy, step_type="gate_eval")

    async def admit(self, adm: Admission) -> Plan:
        """Compile the expression; in ``strict_replay`` (``adm.recorded`` given) the work
        re-evaluates over the recorded Facts and compares.

        Raises:
            InvalidParams: the expression does not compile or is over the expression
                limits (``data.field`` ``input.expression``, NERVE-4007).
        """
        ctx = self.ctx
        cfg, store, clock = ctx.config, ctx.store, ctx.clock
        gate = compile_gate(adm.body.input.expression)
        run_id, wait_s = adm.run.run_id, adm.body.input.wait_ms / 1000.0
        recorded = adm.recorded

        async def evaluate(rows: list[FactRow]) -> tuple[list[str], bool, Any]:
            """``(fact ids, passed, value)``, evaluated in a worker thread."""
            return await anyio.to_thread.run_sync(_evaluate, gate, rows, cfg.max_gate_work,
                                                  cfg.max_recorded_value_bytes)

        async def live() -> Any:
            deadline = clock.monotonic() + wait_s
            while True:
                rows = store.list_facts(run_id=run_id, limit=100_000)
                seen, passed, value = await evaluate(rows)
                left = deadline - clock.monotonic()
                if passed or left <= 0:
                    return {"passed": passed, "value": value, "facts_seen": seen,
                            "high_water": rows[-1].seq if rows else -1}
                with clock.move_on_after(left):
                    await ctx.facts.wait_for_new(run_id)

        async def again() -> Any:
            assert recorded is not None
            end = next(msgspec.json.decode(d) for _s, t, d in
                       store.read_events(recorded.step_id, -1) if t == "end")
            want = end["output"]
            rows = store.list_facts(fact_ids=want["facts_seen"], limit=100_000)
            _seen, passed, value = await evaluate(rows)
            if (passed, value) != (want["passed"], want["value"]):
                raise ReplayDiverged(run_id=run_id, step_id=adm.step_id, index=0,
                                     expected={"passed": want["passed"],
                                               "value": want["value"]},
                                     actual={"passed": passed, "value": value})
            return want

        async def execute(sr: StepRun) -> Done:
            return await run_effect(sr, clock, again if recorded is not None else live,
                                    executor="gate")

        return Plan(execute=execute, executor="gate")


KINDS = (GateEval,)
"""The Step types of this module (the registry finds them here)."""
