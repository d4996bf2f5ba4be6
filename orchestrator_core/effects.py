"""Side-effecting Steps: ``tool_call`` and ``fs_op`` (NERVE-4011, POLICY-3001, POLICY-3002,
POLICY-3010, POLICY-3011, POLICY-3012).

Admission happens here, before anything is stored: the tool must be declared by the Flow,
its arguments must validate against the tool's JSON Schema (2020-12) — invalid arguments
are ``INVALID_TOOL_ARGS`` and never reach the executor — and the executor's (or, for the
file system, the Run's) circuit breaker must not be open. Execution goes through
:meth:`Executor.run_effect`: one ``started`` frame, the effect, then ``end`` carrying the
result, or ``error``. In ``replay`` and ``strict_replay`` these Steps are served from the
recording and never run again (DESIGN.md §2).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import anyio
import msgspec

from contracts.errors import CircuitOpen, InvalidParams, InvalidToolArgs
from contracts.flows import ToolSchema
from contracts.runs import FsPolicy, Run
from contracts.steps import FsOpSubmit, Step, ToolCallSubmit
from orchestrator_core.breaker import CircuitBreaker
from orchestrator_core.executor import EffectJob
from orchestrator_core.fsbroker import FsBroker, FsLimits, FsOpInput, FsUsage
from orchestrator_core.host import StepHost
from orchestrator_core.sandboxes import (
    create_roots,
    remove_created,
    sweep_temp_files,
    tenant_dirs,
)
from orchestrator_core.schema_guard import check_schema, violations
from worker_adapters.base import ToolExecutors

__all__ = ["Effects", "check_tool_schemas"]

log = logging.getLogger("orchestratord")


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


class Effects:
    """Admission and job building for ``tool_call`` and ``fs_op`` Steps.

    Args:
        orch: the orchestrator (store, executor, config, clock).
        tools: the operator's tool executors, built by the injected factory (PLACE-5006).
    """

    def __init__(self, orch: StepHost, tools: ToolExecutors) -> None:
        self.orch = orch
        cfg = orch.config
        self.tools = tools
        self.tool_breakers: dict[str, CircuitBreaker] = {}
        self.fs_breakers: dict[str, CircuitBreaker] = {}
        self._fs_locks: dict[str, anyio.Lock] = {}
        limits = cfg.fs_limits
        if not limits.allowed_parents:
            default = pathlib.Path(cfg.data_dir).resolve() / "sandboxes"
            limits = msgspec.structs.replace(limits, allowed_parents=[str(default)])
        self.fs_limits: FsLimits = limits

    def _breaker(self, table: dict[str, CircuitBreaker], key: str, target: str) -> \
            CircuitBreaker:
        if key not in table:
            cfg = self.orch.config
            table[key] = CircuitBreaker(target, self.orch.clock,
                                        failure_threshold=cfg.breaker_failures,
                                        reset_timeout_s=cfg.breaker_reset_ms / 1000.0)
        return table[key]

    # -- tool_call ---------------------------------------------------------------------

    def submit_tool(self, run: Run, body: ToolCallSubmit, input_value: Any,
                    input_hash: str) -> Step:
        """Admit a ``tool_call``: declared tool, valid arguments, executor breaker closed.

        Raises:
            InvalidParams: the Flow declares no such tool, or no executor serves it.
            InvalidToolArgs: the arguments violate the tool's schema (``data.errors``).
            CircuitOpen: the executor's breaker is open.
        """
        flow = self.orch.get_flow(run.flow_id, None)
        tool = next((t for t in flow.tools if t.name == body.input.tool), None)
        if tool is None:
            raise InvalidParams(f"the flow declares no tool named {body.input.tool!r}",
                                data={"tool": body.input.tool,
                                      "declared": [t.name for t in flow.tools]})
        executor = self.tools.get(tool.executor or tool.name)
        errors = violations(tool.parameters, body.input.args)
        if errors:
            raise InvalidToolArgs(f"arguments of tool {tool.name} do not match its schema",
                                  data={"tool": tool.name, "errors": errors})
        breaker = self._breaker(self.tool_breakers, executor.name, f"tool:{executor.name}")
        if not breaker.peek():
            raise CircuitOpen(f"tool executor {executor.name}'s circuit breaker is open",
                              retry_after_ms=breaker.retry_after_ms(),
                              data={"executor": executor.name})
        args = dict(body.input.args)
        step_id = self.orch.insert_step(run, body, "tool_call", input_value, input_hash,
                                        None, None)

        async def call() -> Any:
            self.orch.metrics.tool_executions.labels(executor=executor.name).inc()
            return await executor.call(args)

        self.orch.spawn(self.orch.executor.run_effect, EffectJob(
            step_id=step_id, run_id=run.run_id, step_type="tool_call",
            executor=executor.name, call=call, breaker=breaker,
            output_schema=tool.output_schema, submitted_at=self.orch.clock.monotonic()))
        return self.orch.get_step(step_id, None)

    # -- fs_op -------------------------------------------------------------------------

    def validate_fs_policy(self, policy: FsPolicy, tenant: str) -> None:
        """Refuse a Run whose fs_policy leaves the tenant's directories or the operator's
        limits; touches no file (POLICY-3001, POLICY-3010).

        Raises:
            FsPolicyViolation: a root is outside the tenant's own directories.
            InvalidParams: a malformed root, an unknown op or a quota above the limits.
        """
        FsBroker(policy, self.fs_limits, tenant=tenant)

    def create_roots(self, policy: FsPolicy, tenant: str) -> list[str]:
        """Create a record Run's missing roots (mode 0700); call it after every other
        check of the Run passed (POLICY-3011).

        Returns:
            The directories created, for :meth:`discard_roots` if the Run is not stored.

        Raises:
            FsPolicyViolation, InvalidParams: as :meth:`validate_fs_policy`, or a root
                cannot be created.
        """
        parents = self.fs_limits.allowed_parents
        broker = FsBroker(policy, self.fs_limits, tenant=tenant)
        return create_roots(broker.roots, parents, tenant)

    @staticmethod
    def discard_roots(created: list[str]) -> None:
        """Remove directories :meth:`create_roots` made, where still empty."""
        remove_created(created)

    def sandbox_dirs(self, tenant: str) -> list[str]:
        """The tenant's own directory in each allowed parent (``GET /v1/capabilities``)."""
        return tenant_dirs(self.fs_limits.allowed_parents, tenant)

    def sweep_temp_files(self) -> int:
        """Remove temporary files a crash left in any sandbox (POLICY-3012).

        Returns:
            How many were removed.
        """
        removed = sweep_temp_files(self.fs_limits.allowed_parents)
        if removed:
            log.warning("removed %d leftover fs broker temporary file(s)", removed)
        return removed

    def broker(self, run: Run) -> FsBroker:
        """The Run's broker (its fs_policy within its tenant's directories and the
        operator's limits).

        Raises:
            FsPolicyViolation: a root is no longer inside the tenant's directories.
            InvalidParams: the policy exceeds the operator limits.
        """
        row = self.orch.store.get_run(run.run_id)
        assert row is not None
        return FsBroker(run.fs_policy, self.fs_limits, tenant=row.tenant)

    def _fs_usage(self, run_id: str) -> FsUsage:
        """Cumulative usage recorded by the Run's last successful fs_op."""
        for row in reversed(self.orch.store.list_steps(run_id)):
            if row.type != "fs_op" or row.status != "succeeded":
                continue
            for _seq, ftype, data in self.orch.store.read_events(row.step_id, -1):
                if ftype == "end":
                    usage = msgspec.json.decode(data)["output"].get("fs_usage", {})
                    return msgspec.convert(usage, FsUsage)
        return FsUsage()

    def submit_fs(self, run: Run, body: FsOpSubmit, input_value: Any, input_hash: str) -> Step:
        """Admit an ``fs_op``; it runs serialised per Run (quotas), in a worker thread; the
        broker serialises mutations of one file across Runs (POLICY-3012).

        Raises:
            InvalidParams: the Run has no sandbox roots, or its policy exceeds the limits.
            FsPolicyViolation: a root is no longer inside the tenant's directories.
            CircuitOpen: repeated violations opened the Run's file-system breaker.
        """
        if not run.fs_policy.roots:
            raise InvalidParams("this run's fs_policy has no roots; fs_op needs a sandbox",
                                data={"field": "fs_policy.roots"})
        broker = self.broker(run)
        breaker = self._breaker(self.fs_breakers, run.run_id, f"fs:{run.run_id}")
        if not breaker.peek():
            raise CircuitOpen("repeated file-system policy violations opened this run's "
                              "breaker", retry_after_ms=breaker.retry_after_ms(),
                              data={"run_id": run.run_id})
        op = msgspec.convert(msgspec.to_builtins(body.input), FsOpInput)
        step_id = self.orch.insert_step(run, body, "fs_op", input_value, input_hash,
                                        None, None)
        run_id = run.run_id

        async def call() -> Any:
            self.orch.metrics.fs_operations.labels(op=op.op).inc()
            usage = self._fs_usage(run_id)
            result, after = await anyio.to_thread.run_sync(broker.execute, op, usage)
            return {**result, "fs_usage": msgspec.to_builtins(after)}

        lock = self._fs_locks.setdefault(run_id, anyio.Lock())
        self.orch.spawn(self.orch.executor.run_effect, EffectJob(
            step_id=step_id, run_id=run_id, step_type="fs_op", executor="fs", call=call,
            breaker=breaker, output_schema=None, submitted_at=self.orch.clock.monotonic(),
            lock=lock))
        return self.orch.get_step(step_id, None)

