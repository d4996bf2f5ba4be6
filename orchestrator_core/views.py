"""Stored rows to wire resources (the only place that knows both shapes)."""

from __future__ import annotations

import msgspec

from contracts.errors import ErrorEnvelope
from contracts.events import Provenance
from contracts.flows import Flow, ToolSchema
from contracts.run_life import RunSummary
from contracts.runs import (
    Budgets,
    BudgetUsage,
    CacheMode,
    FsPolicy,
    Placement,
    Policy,
    PoolPolicy,
    Run,
    RunMode,
    RunStatus,
)
from contracts.steps import Step, StepStatus, StepType
from orchestrator_core.rows import FlowRow, RunRow, RunUsage, StepRow

__all__ = ["flow", "run", "step"]


class _RunBody(msgspec.Struct):
    budgets: Budgets
    policy: Policy
    pool_policy: PoolPolicy
    fs_policy: FsPolicy
    labels: dict[str, str]
    cancel_on_disconnect: bool | None = None
    cache: CacheMode = "off"


_run_body = msgspec.json.Decoder(_RunBody)
_tools = msgspec.json.Decoder(list[ToolSchema])
_prov = msgspec.json.Decoder(Provenance)
_err = msgspec.json.Decoder(ErrorEnvelope)
_placement = msgspec.json.Decoder(Placement)
_summary = msgspec.json.Decoder(RunSummary)
_LIVE = frozenset({StepStatus.QUEUED.value, StepStatus.RUNNING.value})


def flow(row: FlowRow) -> Flow:
    """A ``flows`` row as a :class:`Flow`."""
    return Flow(flow_id=row.flow_id, hash=row.hash,
                ast_ir=msgspec.json.decode(row.ast_ir), tools=_tools.decode(row.tools),
                config=msgspec.json.decode(row.config),
                labels=msgspec.json.decode(row.labels or "{}"),
                created_at=row.created_at)


def run(row: RunRow, usage: RunUsage, children: list[str] | None = None) -> Run:
    """A ``runs`` row plus its usage sums (and forked children) as a :class:`Run`."""
    body = _run_body.decode(row.body)
    return Run(run_id=row.run_id, flow_id=row.flow_id, flow_hash=row.flow_hash,
               mode=RunMode(row.mode), seed=row.seed, replay_of=row.replay_of,
               budgets=body.budgets, policy=body.policy, policy_hash=row.policy_hash,
               pool_policy=body.pool_policy, fs_policy=body.fs_policy, labels=body.labels,
               status=RunStatus(row.status), created_at=row.created_at,
               usage=BudgetUsage(tokens_in=usage.tokens_in, tokens_out=usage.tokens_out,
                                 wall_ms=usage.wall_ms, cost_usd=usage.cost_usd),
               steps=usage.counts, cancel_on_disconnect=body.cancel_on_disconnect,
               lineage={"parent_run_id": row.parent_run_id,
                        "from_checkpoint": row.from_checkpoint,
                        "children": children or []},
               closed_at=row.closed_at,
               summary=_summary.decode(row.summary) if row.summary else None,
               cache=body.cache)


def step(row: StepRow) -> Step:
    """A ``steps`` row as a :class:`Step`."""
    return Step(
        step_id=row.step_id, run_id=row.run_id, type=StepType(row.type),
        client_token=row.client_token, input=msgspec.json.decode(row.input),
        input_hash=row.input_hash,
        placement=_placement.decode(row.placement) if row.placement else None,
        status=StepStatus(row.status), seed=row.seed, created_at=row.created_at,
        usage=BudgetUsage(tokens_in=row.tokens_in, tokens_out=row.tokens_out,
                          wall_ms=row.wall_ms, cost_usd=row.cost_usd),
        last_seq=row.last_seq,
        # a Step stores its provenance at admission; it is shown once the Step has ended
        provenance=_prov.decode(row.provenance)
        if row.provenance and row.status not in _LIVE else None,
        error=_err.decode(row.error) if row.error else None,
        replay_of_step=row.replay_of_step, attempt=row.attempt, retry_of=row.retry_of,
    )
