"""The step protocol: what one Step type implements, and the narrow context it runs in.

A Step type is one module of :mod:`orchestrator_core.steps` that lists its classes in
``KINDS`` (``specs/90_adding_a_step_type.md``). Each class implements :class:`StepKind`:

* ``submits``: the wire Structs of ``contracts.steps`` it serves (their tag is the type);
* ``replay``: its :class:`ReplayRule`, one row of the replay table (NERVE-4021);
* ``check_policy``: the Run's allow/deny rules for its values (POLICY-3003), in every mode;
* ``admit``: every check that can refuse the Step before anything is stored (validation,
  placement, budget reservation), returning a :class:`Plan`; it may await the engine
  once (an LLM prompt's token count) and nothing else;
* the plan's ``execute``: the work, run by :mod:`orchestrator_core.steps.runner` under
  the one wrapper that applies, around every type, the terminal-frame guard, the
  wall-clock deadline, budget accounting and the provenance block.

A type sees a :class:`StepContext` (store, log, pools, budgets, clock, config, metrics,
tool executors, Facts, Checkpoints, sandboxes), never the orchestrator.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import anyio
import msgspec
from opentelemetry.trace import Span

from contracts.errors import CircuitOpen, EngineError, FsPolicyViolation
from contracts.events import DurablePayload, Provenance, StartedData
from contracts.flows import Flow
from contracts.runs import Run, RunMode
from contracts.steps import StepStatus
from orchestrator_core import tracing
from orchestrator_core.breaker import BreakerState, CircuitBreaker, Transition
from orchestrator_core.budgets import BudgetBook, Reservation
from orchestrator_core.checkpoints import Checkpoints
from orchestrator_core.clock import Clock
from orchestrator_core.config import ServerConfig
from orchestrator_core.eventlog import EventLog
from orchestrator_core.facts import Facts
from orchestrator_core.fs_sandboxes import Sandboxes
from orchestrator_core.lookup import get_flow
from orchestrator_core.metrics import Metrics
from orchestrator_core.pools import PoolManager
from orchestrator_core.rows import StepRow
from orchestrator_core.schema_guard import violations
from orchestrator_core.store_base import Store
from worker_adapters.base import ToolExecutors

__all__ = [
    "Admission",
    "Done",
    "Plan",
    "ReplayRule",
    "StepContext",
    "StepKind",
    "StepRun",
    "new_breaker",
    "run_effect",
]


@dataclass
class StepContext:
    """What a Step type may use (PLACE-5006): no HTTP, no orchestrator."""

    config: ServerConfig
    store: Store
    log: EventLog
    pools: PoolManager
    budgets: BudgetBook
    clock: Clock
    metrics: Metrics
    tools: ToolExecutors
    facts: Facts
    checkpoints: Checkpoints
    sandboxes: Sandboxes

    def flow(self, flow_id: str) -> Flow:
        """The Flow of a Run (unscoped: the Run was already checked against the tenant)."""
        return get_flow(self.store, flow_id, None)


@dataclass(frozen=True)
class ReplayRule:
    """One row of the replay table: what a Step type does in each Run mode (NERVE-4021).

    ``replay`` always serves the recording. In ``strict_replay`` a type either serves the
    recording (``reruns`` False: side effects never run again, DESIGN.md §2) or runs again
    and compares with it (``reruns`` True; a recording that failed is served instead).

    Attributes:
        record: what runs in ``record`` mode, as the spec's table says it.
        strict_replay: what ``strict_replay`` does, as the spec's table says it.
        reruns: True when ``strict_replay`` runs the Step again.
        inputs_first: True when the type compares its determinism inputs before the input
            hash (NERVE-4022): the recording is then matched by token and type only, and
            the type checks the input hash itself, last.
    """

    record: str
    strict_replay: str = "serves the recording"
    reruns: bool = False
    inputs_first: bool = False


@dataclass(frozen=True)
class Admission:
    """A submission that passed the checks every type shares, handed to ``admit``.

    Attributes:
        step_id: the id the Step will have (nothing is stored yet).
        run: the Run, in the caller's tenant.
        body: the submission (one of the kind's ``submits`` Structs).
        mode: the Run's mode.
        step_type: the wire type, e.g. ``tool_call``.
        input_value: ``body.input`` as builtins.
        input_hash: ``b3`` of ``{type, input}`` (NERVE-4003).
        recorded: in ``strict_replay`` of a type that ``reruns``, the recorded Step row
            (it succeeded); else None.
        attempt: 0, or the attempt number of a retry of an interrupted Step
            (NERVE-4105).
        retry_of: the first attempt's step_id on a retry, else None.
        tenant: the caller's tenant, the Run's (the exact-match cache is per tenant,
            REC-7101).
    """

    step_id: str
    run: Run
    body: Any
    mode: RunMode
    step_type: str
    input_value: Any
    input_hash: str
    recorded: StepRow | None = None
    attempt: int = 0
    retry_of: str | None = None
    tenant: str = ""


@dataclass(frozen=True)
class Done:
    """What a Step's work produced: its output and the wall time of the work (ms)."""

    output: Any
    duration_ms: int = 0


@dataclass
class Plan:
    """An admitted Step, ready to be stored and run; nothing has been stored yet.

    Attributes:
        execute: the work. It returns :class:`Done`, or raises a typed error; the runner
            writes the terminal frame either way.
        executor: names what did the work, in ``end`` and in the provenance block
            (``tool_call``: the executor; else ``fs``, ``gate``, ``checkpoint``).
        provenance: the block known at admission (usage still 0); None lets the runner
            build the block of a type that is not an LLM call (NERVE-4020).
        llm: True for ``llm_call``/``llm_plan``: ``end`` is ``EndData`` and the block has
            ``decode_time_ms`` and ``finish_reason``; otherwise ``end`` is
            ``EffectEndData`` and the output is bounded by ``max_recorded_value_bytes``.
        model: model id for the cost of the tokens used (price table), if any.
        seed: stored on the Step (LLM types).
        reservation: output tokens and cost reserved by ``BudgetBook.admit``; released
            when the Step's task ends.
        lock: held from the start of the work until its ``end`` is committed (``fs_op``
            quotas are read from the previous ``end``).
        cache_key: the exact-match cache key stored on a ``record`` LLM Step that runs
            (REC-7102), else None.
        cached: the earlier Step this one is served from by the exact-match cache
            (REC-7103): nothing runs; ``execute`` is never called.
    """

    execute: Callable[[StepRun], Awaitable[Done]]
    executor: str = ""
    provenance: Provenance | None = None
    llm: bool = False
    model: str | None = None
    seed: int | None = None
    reservation: Reservation | None = None
    lock: anyio.Lock | None = None
    cache_key: str | None = None
    cached: StepRow | None = None


class StepRun:
    """One running Step, as its work sees it: frame appends and the usage it reports.

    The runner owns it: it reads ``tokens_in``, ``tokens_out``, ``decode_started`` and
    ``finish_reason`` into the provenance block of whichever terminal frame ends the Step.
    ``plan`` is None for a Step that serves a recording.
    ``decode_ended`` is when the engine stream closed (the end of the engine's time,
    OBS-8053).
    Units: monotonic seconds (``submitted_at``, ``deadline``, ``decode_started``,
    ``decode_ended``).
    """

    __slots__ = (
        "deadline",
        "decode_ended",
        "decode_started",
        "finish_reason",
        "log",
        "mode",
        "plan",
        "provenance",
        "run_id",
        "span",
        "step_id",
        "step_type",
        "submitted_at",
        "tokens_in",
        "tokens_out",
    )

    def __init__(self, log: EventLog, step_id: str, run_id: str, step_type: str, mode: str,
                 plan: Plan | None, provenance: Provenance, submitted_at: float,
                 deadline: float = math.inf) -> None:
        self.log = log
        self.step_id = step_id
        self.run_id = run_id
        self.step_type = step_type
        self.mode = mode
        self.plan = plan
        self.provenance = provenance
        self.submitted_at = submitted_at
        self.deadline = deadline
        self.tokens_in = 0
        self.tokens_out = 0
        self.decode_started: float | None = None
        self.decode_ended: float | None = None
        self.finish_reason: str | None = None
        self.span: Span | None = None  # set when its task is started (OBS-8011)

    def started(self, payload: StartedData | None = None) -> None:
        """Append ``started`` (default: the Step's type, position 0) and mark it running."""
        self.log.append(self.step_id, payload or StartedData(
            type=self.step_type, queue_position=0, predicted_start_ms=0),
            update={"status": StepStatus.RUNNING.value})
        tracing.step_running(self.step_id, self.run_id, self.step_type)

    def append(self, payload: DurablePayload) -> None:
        """Append one non-terminal durable frame."""
        self.log.append(self.step_id, payload)

    def escalate(self, moved: Transition | None) -> None:
        """Log a circuit-breaker transition as an ``escalation`` frame (POLICY-3002)."""
        if moved is not None:
            self.log.append(self.step_id, moved)


class StepKind(Protocol):
    """One Step type (see the module docstring); constructed with the context."""

    submits: ClassVar[tuple[type[msgspec.Struct], ...]]
    replay: ClassVar[ReplayRule]

    def check_policy(self, run: Run, body: Any) -> None:
        """Raise ``PolicyDenied`` when the Run's policy denies this Step (POLICY-3003)."""
        ...

    async def admit(self, adm: Admission) -> Plan:
        """Check everything that can refuse the Step; store nothing.

        Raises:
            OrchestratorError: a typed refusal (4xx/5xx before the Step exists).
        """
        ...


def new_breaker(ctx: StepContext, target: str) -> CircuitBreaker:
    """A circuit breaker on the context's clock with the server's thresholds
    (POLICY-3002)."""
    cfg = ctx.config
    return CircuitBreaker(target, ctx.clock, failure_threshold=cfg.breaker_failures,
                          reset_timeout_s=cfg.breaker_reset_ms / 1000.0)


async def run_effect(sr: StepRun, clock: Clock, call: Callable[[], Awaitable[Any]], *,
                     executor: str, breaker: CircuitBreaker | None = None,
                     output_schema: dict[str, Any] | None = None) -> Done:
    """Run one piece of work behind an optional circuit breaker: ``started``, the breaker's
    verdict, the call, the output schema (POLICY-3002, NERVE-4011).

    ``ENGINE_ERROR`` and ``FS_POLICY_VIOLATION`` count as breaker failures, a result as a
    success (also one the server then refuses to record); anything else (cancel,
    deadline) gives no verdict and frees the probe slot.

    Returns:
        The output and the call's wall time (ms).

    Raises:
        CircuitOpen: the breaker refused the call (after ``started``).
        EngineError: the output does not match ``output_schema``.
    """
    sr.started()
    if breaker is not None:
        allowed, probing = breaker.allow()
        sr.escalate(probing)
        if not allowed:
            raise CircuitOpen(f"{executor}'s circuit breaker is open",
                              data={"executor": executor})
    t0 = clock.monotonic()
    moved: Transition | None = None
    verdict = False
    try:
        with tracing.effect_span(sr.step_type, executor):
            output = await call()
        verdict = True
        if output_schema is not None:
            errors = violations(output_schema, output)
            if errors:
                moved = breaker.failure("output does not match output_schema") \
                    if breaker is not None else None
                raise EngineError(f"{executor} returned output that does not match "
                                  "the tool's output_schema",
                                  data={"executor": executor,
                                        "errors": [e["message"] for e in errors[:10]]})
        moved = breaker.success() if breaker is not None else None
    except (EngineError, FsPolicyViolation) as err:
        verdict = True
        if breaker is not None and moved is None and breaker.state is not BreakerState.OPEN:
            moved = breaker.failure(f"{err.code.value}: {err.message}")
        raise
    finally:
        if not verdict and breaker is not None:
            breaker.release_probe()
        sr.escalate(moved)
    return Done(output, int((clock.monotonic() - t0) * 1000))

