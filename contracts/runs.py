"""Run wire types: mode, seed, budgets, policies and placement (NERVE-4002, PLACE-5001)."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

from contracts.limits import Id, Labels, Seed
from contracts.run_life import RunSummary

__all__ = [
    "BudgetUsage",
    "Budgets",
    "CacheMode",
    "FsPolicy",
    "Placement",
    "PlacementAffinity",
    "PlacementAuto",
    "PlacementPin",
    "Policy",
    "PoolPolicy",
    "Run",
    "RunCreate",
    "RunMode",
    "RunStatus",
]


class RunMode(enum.StrEnum):
    """How a Run executes its Steps (NERVE-4002)."""

    RECORD = "record"
    REPLAY = "replay"
    STRICT_REPLAY = "strict_replay"


CacheMode = Literal["off", "exact"]
"""A Run's exact-match cache (REC-7100): ``off`` (the default) or ``exact``."""


class RunStatus(enum.StrEnum):
    """Run lifecycle: ``active`` accepts Steps; the closed statuses ``completed``,
    ``failed`` and ``cancelled`` refuse them (NERVE-4103)."""

    ACTIVE = "active"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


class Budgets(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Hard caps (POLICY-3000). ``None`` means no cap at this level.

    Units: tokens, milliseconds of wall clock, US dollars.
    """

    max_tokens_in: int | None = None
    max_tokens_out: int | None = None
    max_wall_ms: int | None = None
    max_cost_usd: float | None = None


class BudgetUsage(msgspec.Struct):
    """What a Run or Step has consumed so far (tokens, ms, USD)."""

    tokens_in: int = 0
    tokens_out: int = 0
    wall_ms: int = 0
    cost_usd: float = 0.0


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Allow/deny lists evaluated before execution (POLICY-3003).

    An ``allow_*`` list, when present, admits only what it names; a ``deny_*`` list
    refuses what it names. Denials are ``POLICY_DENIED`` before any compute. ``redact``
    holds regular expressions whose matches in prompts become ``[REDACTED]`` before the
    engine sees them.
    """

    allow_models: list[str] | None = None
    deny_models: list[str] = msgspec.field(default_factory=list)
    allow_step_types: list[str] | None = None
    deny_step_types: list[str] = msgspec.field(default_factory=list)
    allow_tools: list[str] | None = None
    deny_tools: list[str] = msgspec.field(default_factory=list)
    allow_fs_ops: list[str] | None = None
    deny_fs_ops: list[str] = msgspec.field(default_factory=list)
    redact: list[str] = msgspec.field(default_factory=list)


class PlacementAuto(msgspec.Struct, frozen=True, tag="auto", tag_field="strategy",
                    forbid_unknown_fields=True):
    """Least-loaded ready replica serving the model; ties: free slots desc, replica_id asc."""


class PlacementPin(msgspec.Struct, frozen=True, tag="pin", tag_field="strategy",
                   forbid_unknown_fields=True, omit_defaults=True):
    """Exactly this pool (and replica, when given), or a typed error. Never a fallback."""

    pool_id: str
    replica_id: str | None = None


class PlacementAffinity(msgspec.Struct, frozen=True, tag="affinity", tag_field="strategy",
                        forbid_unknown_fields=True):
    """Pools whose tags contain every ``key: value`` pair of ``tags``; then as ``auto``."""

    tags: dict[str, str]


Placement = PlacementAuto | PlacementPin | PlacementAffinity


class PoolPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Default placement for the Run's Steps; a Step may override it."""

    placement: Placement = msgspec.field(default_factory=PlacementAuto)


_FsRoot = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
"""A sandbox root: relative to the tenant's sandbox directory, or absolute inside it."""

_FsGlob = Annotated[str, msgspec.Meta(max_length=256)]
"""An allow-list glob over root-relative paths."""


class FsPolicy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Sandbox for ``fs_op`` Steps: roots, per-operation allow-list globs, quotas.

    At most 16 roots of 1..1024 characters; ``allow`` maps at most 7 ops to at most 32
    globs of up to 256 characters each (POLICY-3001, POLICY-3011).
    """

    roots: Annotated[list[_FsRoot], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    allow: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=16)],
             Annotated[list[_FsGlob], msgspec.Meta(max_length=32)]],
        msgspec.Meta(max_length=7)] = msgspec.field(default_factory=dict)
    max_bytes_written: int | None = None
    max_files: int | None = None
    max_file_bytes: int | None = None


class RunCreate(msgspec.Struct, forbid_unknown_fields=True):
    """Body of ``POST /v1/flows/{flow_id}/runs``.

    ``replay`` and ``strict_replay`` need ``replay_of`` (a recorded Run of the same Flow).
    ``seed`` defaults to the recording's seed when replaying, else to a random 31-bit seed.
    ``cancel_on_disconnect`` overrides the server's setting for this Run's Steps.
    ``from_checkpoint`` forks a new ``record`` Run from a checkpoint of another Run of
    the same Flow: it shares that Run's history up to the checkpoint (its Facts are
    copied; its finished Steps are served from the parent's log when submitted again
    with the same client_token) and diverges after it. The parent is never changed.
    ``cache: "exact"`` (a ``record`` Run only) serves an LLM Step from an earlier
    succeeded Step of the same tenant with the same input and determinism inputs,
    with no engine request (REC-7100); the default ``"off"`` always runs the engine.
    """

    mode: RunMode = RunMode.RECORD
    seed: Seed | None = None
    replay_of: Id | None = None
    budgets: Budgets = msgspec.field(default_factory=Budgets)
    policy: Policy = msgspec.field(default_factory=Policy)
    pool_policy: PoolPolicy = msgspec.field(default_factory=PoolPolicy)
    fs_policy: FsPolicy = msgspec.field(default_factory=FsPolicy)
    labels: Labels = msgspec.field(default_factory=dict)
    cancel_on_disconnect: bool | None = None
    from_checkpoint: Id | None = None
    cache: CacheMode = "off"


class Run(msgspec.Struct):
    """A stored Run, as ``GET /v1/runs/{id}`` shows it; a closed Run has ``closed_at``
    and, once none of its Steps is live, its ``summary`` (NERVE-4103, NERVE-4104)."""

    run_id: str
    flow_id: str
    flow_hash: str
    mode: RunMode
    seed: int
    replay_of: str | None
    budgets: Budgets
    policy: Policy
    policy_hash: str
    pool_policy: PoolPolicy
    fs_policy: FsPolicy
    labels: dict[str, str]
    status: RunStatus
    created_at: str
    usage: BudgetUsage
    steps: dict[str, int]
    cancel_on_disconnect: bool | None = None
    lineage: dict[str, Any] = msgspec.field(default_factory=dict)
    closed_at: str | None = None
    summary: RunSummary | None = None
    cache: CacheMode = "off"
