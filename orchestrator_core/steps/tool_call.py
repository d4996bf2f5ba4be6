"""``tool_call``: one call of an operator-configured tool executor (NERVE-4011, POLICY-3002).

Admission, before anything is stored: the Flow must declare the tool, its arguments must
validate against the tool's JSON Schema (2020-12) (invalid arguments are
``INVALID_TOOL_ARGS`` and never reach the executor), and the executor's circuit breaker
must not be open. The work runs the executor once, in ``record`` mode only, and checks
its output against the tool's ``output_schema``. Replays serve the recorded result and
never call the executor again (DESIGN.md §2).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from contracts.errors import CircuitOpen, InvalidParams, InvalidToolArgs
from contracts.flows import ToolSchema
from contracts.runs import Run
from contracts.steps import ToolCallSubmit
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.policy import check_allowed
from orchestrator_core.schema_guard import check_schema, violations
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

__all__ = ["KINDS", "ToolCall", "check_tool_schemas"]


def check_tool_schemas(tool: ToolSchema, index: int = 0) -> None:
    """Refuse a Flow whose tool declares an invalid or unsafe JSON Schema (2020-12;
    the limits of POLICY-3020, patterns on RE2).

    Args:
        tool: the declared tool.
        index: its position in the Flow's ``tools``.

    Raises:
        InvalidParams: ``data`` names the tool, the field (``tools[<i>].parameters`` or
            ``tools[<i>].output_schema``) and the JSON pointer inside the schema.
    """
    for field, schema in (("parameters", tool.parameters), ("output_schema", tool.output_schema)):
        if schema is None:
            continue
        check_schema(schema, field=f"tools[{index}].{field}",
                     label=f"tool {tool.name}: {field}", extra={"tool": tool.name})


class ToolCall:
    """``tool_call`` Steps, with one circuit breaker per tool executor.

    Args:
        ctx: the step context (its ``tools`` are the operator's executors, PLACE-5006).
    """

    submits: ClassVar[tuple[type[msgspec.Struct], ...]] = (ToolCallSubmit,)
    replay: ClassVar[ReplayRule] = ReplayRule(record="runs the tool executor once")

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.breakers: dict[str, CircuitBreaker] = {}

    def check_policy(self, run: Run, body: ToolCallSubmit) -> None:
        """The Step type and the tool."""
        check_allowed(run.policy, step_type="tool_call", tool=body.input.tool)

    async def admit(self, adm: Admission) -> Plan:
        """Declared tool, valid arguments, executor breaker closed.

        Raises:
            InvalidParams: the Flow declares no such tool, or no executor serves it.
            InvalidToolArgs: the arguments violate the tool's schema (``data.errors``).
            CircuitOpen: the executor's breaker is open.
        """
        ctx, body = self.ctx, adm.body
        flow = ctx.flow(adm.run.flow_id)
        tool = next((t for t in flow.tools if t.name == body.input.tool), None)
        if tool is None:
            raise InvalidParams(f"the flow declares no tool named {body.input.tool!r}",
                                data={"tool": body.input.tool,
                                      "declared": [t.name for t in flow.tools]})
        executor = ctx.tools.get(tool.executor or tool.name)
        errors = violations(tool.parameters, body.input.args)
        if errors:
            raise InvalidToolArgs(f"arguments of tool {tool.name} do not match its schema",
                                  data={"tool": tool.name, "errors": errors})
        name = executor.name
        breaker = self.breakers.get(name)
        if breaker is None:
            breaker = self.breakers[name] = new_breaker(ctx, f"tool:{name}")
        if not breaker.peek():
            raise CircuitOpen(f"tool executor {name}'s circuit breaker is open",
                              retry_after_ms=breaker.retry_after_ms(),
                              data={"executor": name})
        args = dict(body.input.args)

        async def call() -> Any:
            ctx.metrics.tool_executions.labels(executor=name).inc()
            return await executor.call(args)

        async def execute(sr: StepRun) -> Done:
            return await run_effect(sr, ctx.clock, call, executor=name, breaker=breaker,
                                    output_schema=tool.output_schema)

        return Plan(execute=execute, executor=name)


KINDS = (ToolCall,)
"""The Step types of this module (the registry finds them here)."""
