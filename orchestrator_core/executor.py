"""Executes one Step in its own task under a cancel scope the orchestrator holds.

Four paths, one log (DESIGN.md §1-§2):

* ``record`` and ``strict_replay`` wait for a slot on the placed replica, emit ``started``,
  stream the engine's tokens as ``token`` frames and end with ``end`` (provenance) or
  ``error``. ``strict_replay`` checks each token against the recording before it is
  appended, so a divergent token is never shown as if it were right.
* ``replay`` copies the recorded frames into the new Step's log; no engine is touched.
* ``tool_call`` and ``fs_op`` run their effect once, in ``record`` mode only, behind a
  circuit breaker, and end with the result; replays of them are served from the log.
  A result larger than ``max_recorded_value_bytes`` is refused with ``OUTPUT_TOO_LARGE``
  (measured before it is encoded, POLICY-3030); so is a ``gate_eval`` or ``checkpoint``
  output, which runs the same way.

Whatever happens (success, typed error, cancel, unexpected fault) exactly one terminal
frame is committed, together with the Step's terminal status.
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import msgspec

from contracts.errors import (
    BudgetExceeded,
    Cancelled,
    CircuitOpen,
    DeadlineExceeded,
    EngineError,
    FsPolicyViolation,
    Internal,
    Interrupted,
    OrchestratorError,
    OutputTooLarge,
)
from contracts.events import (
    TERMINAL_FRAMES,
    EffectEndData,
    EndData,
    MetricsData,
    PlacementDecision,
    Provenance,
    StartedData,
    TokenData,
)
from contracts.steps import StepStatus
from orchestrator_core.bounds import oversize
from orchestrator_core.breaker import BreakerState, CircuitBreaker, Transition
from orchestrator_core.budgets import BudgetBook, Reservation
from orchestrator_core.clock import Clock
from orchestrator_core.config import PriceTable
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.planning import OutputShape
from orchestrator_core.pools import Pool, Replica
from orchestrator_core.replay import TokenVerifier
from orchestrator_core.schema_guard import violations
from worker_adapters.base import CompletionRequest, Delta, Finish
from worker_adapters.token_bytes import TokenText

__all__ = ["EffectJob", "Executor", "LlmJob", "ReplayJob"]

log = logging.getLogger("orchestrator.executor")


class _NoLock:
    """An async context manager that holds nothing (effects without shared state)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None
_enc = msgspec.json.Encoder()
_TERMINAL = frozenset(t.value for t in TERMINAL_FRAMES)


@dataclass
class LlmJob:
    """Everything needed to run an ``llm_call`` or ``llm_plan`` on an engine (record or
    strict_replay).

    Units: ``submitted_at`` and ``deadline`` in monotonic seconds; the reservation holds
    the budget cap in tokens and USD. ``shape`` turns the decoded text into the output
    and any ``tool_suggest`` frames (NERVE-4010, NERVE-4013).
    """

    step_id: str
    run_id: str
    mode: str
    pool: Pool
    replica: Replica
    decision: PlacementDecision
    request: CompletionRequest
    model: str
    tokens_in: int
    prompt_hash: str
    params_hash: str
    policy_hash: str
    submitted_at: float
    reservation: Reservation
    deadline: float = math.inf
    verifier: TokenVerifier | None = None
    redactions: int = 0
    step_type: str = "llm_call"
    shape: OutputShape = field(default_factory=OutputShape)


@dataclass
class EffectJob:
    """A side-effecting Step (``tool_call``, ``fs_op``) ready to run once.

    ``call`` performs the effect and returns its JSON result; ``breaker`` guards the
    executor; ``lock`` (when set) is held from the effect until its ``end`` is committed, so
    effects of one Run that share state (file-system quotas) run one at a time.
    """

    step_id: str
    run_id: str
    step_type: str
    executor: str
    call: Callable[[], Awaitable[Any]]
    breaker: CircuitBreaker | None
    output_schema: dict[str, Any] | None
    submitted_at: float
    lock: anyio.Lock | None = None


@dataclass
class ReplayJob:
    """A recorded Step whose frames are served again (``replay`` mode)."""

    step_id: str
    run_id: str
    rows: list[tuple[int, str, bytes]]
    final: dict[str, Any] = field(default_factory=dict)


class Executor:
    """Runs Step jobs and guarantees one terminal frame per Step.

    Args:
        log: the event log.
        clock: injected time.
        prices: the versioned price table (cost_usd, price_table_version).
        metrics: Prometheus metrics.
        metrics_every: publish an ephemeral ``metrics`` frame every this many tokens.
        max_recorded_value_bytes: the largest effect output recorded (POLICY-3030).
    """

    def __init__(self, log: EventLog, clock: Clock, prices: PriceTable, metrics: Metrics,
                 budgets: BudgetBook, metrics_every: int = 16,
                 max_recorded_value_bytes: int = 1_048_576) -> None:
        self.log = log
        self.max_recorded_value_bytes = max_recorded_value_bytes
        self.clock = clock
        self.prices = prices
        self.metrics = metrics
        self.budgets = budgets
        self.metrics_every = metrics_every
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.cancel_requested: dict[str, str] = {}

    # -- control -----------------------------------------------------------------------

    def cancel(self, step_id: str, reason: str = "step cancelled") -> bool:
        """Request cancellation; returns False when the Step is not running here."""
        if not self.log.is_live(step_id):
            return False
        self.cancel_requested[step_id] = reason
        scope = self.scopes.get(step_id)
        if scope is not None:
            scope.cancel()
        return True

    def _scope(self, step_id: str) -> anyio.CancelScope:
        """The Step's cancel scope; already cancelled if a cancel arrived before the task."""
        scope = anyio.CancelScope()
        self.scopes[step_id] = scope
        if step_id in self.cancel_requested:
            scope.cancel()
        return scope

    def _escalate(self, step_id: str, moved: Transition) -> None:
        """Log a breaker transition as a durable ``escalation`` frame of this Step."""
        self.log.append(step_id, moved)

    # -- terminal helpers --------------------------------------------------------------

    def _fail(self, step_id: str, err: OrchestratorError, usage: dict[str, Any],
              model: str | None = None, step_type: str = "llm_call") -> None:
        status = {
            "CANCELLED": StepStatus.CANCELLED, "INTERRUPTED": StepStatus.INTERRUPTED,
        }.get(err.code.value, StepStatus.FAILED)
        env = err.envelope()
        if model is not None:
            usage = {**usage, "cost_usd": self.prices.cost_usd(
                model, usage.get("tokens_in", 0), usage.get("tokens_out", 0))}
        if "submitted_at" in usage:
            usage["wall_ms"] = int((self.clock.monotonic() - usage.pop("submitted_at")) * 1000)
        self.log.finish(step_id, env,
                        {"status": status.value, "error": _enc.encode(env).decode(), **usage})
        self.metrics.steps_finished.labels(type=step_type, status=status.value).inc()

    # -- replay ------------------------------------------------------------------------

    async def run_replay(self, job: ReplayJob) -> None:
        """Serve recorded frames into the new Step's log (no engine, tool or FS access)."""
        scope = self._scope(job.step_id)
        try:
            with scope:
                for _seq, ftype, data in job.rows:
                    await anyio.lowlevel.checkpoint()
                    if ftype in _TERMINAL:
                        self.log.finish_recorded(job.step_id, ftype, data, job.final)
                        return
                    self.log.append_recorded(job.step_id, ftype, data)
                self._fail(job.step_id, Interrupted("the recording has no terminal frame"),
                           {})
            if scope.cancel_called and self.log.is_live(job.step_id):
                self._fail(job.step_id, Cancelled(self.cancel_requested.get(job.step_id,
                                                                      "step cancelled")), {})
        finally:
            self.scopes.pop(job.step_id, None)
            self.cancel_requested.pop(job.step_id, None)

    # -- side effects ------------------------------------------------------------------

    async def run_effect(self, job: EffectJob) -> None:
        """Run a ``tool_call`` or ``fs_op`` once and log its result (record mode only).

        The result must fit ``max_recorded_value_bytes`` (POLICY-3030); a larger one ends
        the Step with an ``OUTPUT_TOO_LARGE`` error frame (``data.field`` ``output``) and
        nothing of it is recorded. The executor's breaker has counted the call a success
        by then: the tool worked, the server refused to keep what it said.
        """
        scope = self._scope(job.step_id)
        usage: dict[str, Any] = {"submitted_at": job.submitted_at}
        try:
            with scope:
                try:
                    async with job.lock if job.lock is not None else _NoLock():
                        await self._effect(job)
                except OrchestratorError as err:
                    self._fail(job.step_id, err, usage, step_type=job.step_type)
                except Exception as exc:
                    log.exception("step %s failed unexpectedly", job.step_id)
                    self._fail(job.step_id, Internal(f"{type(exc).__name__}: {exc}"), usage,
                               step_type=job.step_type)
            if self.log.is_live(job.step_id):
                reason = self.cancel_requested.get(job.step_id, "step cancelled")
                self._fail(job.step_id, Cancelled(reason), usage, step_type=job.step_type)
        except anyio.get_cancelled_exc_class():
            if self.log.is_live(job.step_id):
                self._fail(job.step_id, Interrupted("server shutting down"), usage,
                           step_type=job.step_type)
            raise
        finally:
            self.scopes.pop(job.step_id, None)
            self.cancel_requested.pop(job.step_id, None)

    async def _effect(self, job: EffectJob) -> None:
        started = StartedData(type=job.step_type, queue_position=0, predicted_start_ms=0)
        self.log.append(job.step_id, started, update={"status": StepStatus.RUNNING.value})
        breaker = job.breaker
        if breaker is not None:
            allowed, probing = breaker.allow()
            if probing is not None:
                self._escalate(job.step_id, probing)
            if not allowed:
                raise CircuitOpen(f"{job.executor}'s circuit breaker is open",
                                  data={"executor": job.executor})
        t0 = self.clock.monotonic()
        moved: Transition | None = None
        verdict = False
        try:
            output = await job.call()
            verdict = True
            if job.output_schema is not None:
                errors = violations(job.output_schema, output)
                if errors:
                    moved = breaker.failure("output does not match output_schema") \
                        if breaker is not None else None
                    raise EngineError(f"{job.executor} returned output that does not match "
                                      "the tool's output_schema",
                                      data={"executor": job.executor,
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
            if moved is not None:
                self._escalate(job.step_id, moved)
        refused = oversize(output, self.max_recorded_value_bytes)
        if refused is not None:
            bound = (f"{self.max_recorded_value_bytes} bytes of JSON"
                     if refused["reason"] == "size"
                     else f"{refused['limit_depth']} levels of nesting")
            raise OutputTooLarge(f"the {job.step_type} output is over the server's bound on "
                                 f"recorded values ({bound})", data={"field": "output", **refused})
        duration_ms = int((self.clock.monotonic() - t0) * 1000)
        end = EffectEndData(output=output, executor=job.executor, duration_ms=duration_ms)
        self.log.finish(job.step_id, end, {
            "status": StepStatus.SUCCEEDED.value,
            "wall_ms": int((self.clock.monotonic() - job.submitted_at) * 1000),
        })
        self.metrics.steps_finished.labels(type=job.step_type,
                                           status=StepStatus.SUCCEEDED.value).inc()

    # -- record / strict_replay --------------------------------------------------------

    async def run_llm(self, job: LlmJob) -> None:
        """Run one completion on the placed replica and log it (record / strict_replay)."""
        scope = self._scope(job.step_id)
        usage: dict[str, Any] = {"tokens_in": 0, "tokens_out": 0,
                                 "submitted_at": job.submitted_at}
        try:
            with scope:
                try:
                    await self._run_llm(job, usage)
                except OrchestratorError as err:
                    self._fail(job.step_id, err, usage, job.model, job.step_type)
                except Exception as exc:
                    log.exception("step %s failed unexpectedly", job.step_id)
                    self._fail(job.step_id, Internal(f"{type(exc).__name__}: {exc}"), usage,
                               job.model, job.step_type)
            if self.log.is_live(job.step_id):
                reason = self.cancel_requested.get(job.step_id, "step cancelled")
                self._fail(job.step_id, Cancelled(reason), usage, job.model, job.step_type)
        except anyio.get_cancelled_exc_class():
            if self.log.is_live(job.step_id):
                self._fail(job.step_id, Interrupted("server shutting down"), usage, job.model,
                           job.step_type)
            raise
        finally:
            self.budgets.release(job.run_id, job.step_id)
            self.scopes.pop(job.step_id, None)
            self.cancel_requested.pop(job.step_id, None)
            self.metrics.step_latency.labels(type=job.step_type, mode=job.mode).observe(
                self.clock.monotonic() - job.submitted_at)

    async def _run_llm(self, job: LlmJob, usage: dict[str, Any]) -> None:
        rep = job.replica
        queue_position = rep.waiting
        ahead = rep.waiting + (1 if rep.busy >= rep.slots else 0)
        predicted_ms = int(math.ceil(ahead / rep.slots) * rep.avg_step_ms) if ahead else 0
        with self.clock.move_on_after(max(0.0, job.deadline - self.clock.monotonic())) as wall:
            await rep.acquire()
            held_from = self.clock.monotonic()
            try:
                await self._generate(job, usage, queue_position, predicted_ms)
            finally:
                rep.release((self.clock.monotonic() - held_from) * 1000.0)
        if wall.cancelled_caught:
            raise DeadlineExceeded("the step or run wall-clock budget ran out",
                                   data={"budget": "max_wall_ms"})

    async def _generate(self, job: LlmJob, usage: dict[str, Any], queue_position: int,
                        predicted_ms: int) -> None:
        engine = job.replica.engine()
        started = StartedData(type=job.step_type, queue_position=queue_position,
                              predicted_start_ms=predicted_ms, placement=job.decision,
                              redactions=job.redactions)
        self.log.append(job.step_id, started, update={"status": StepStatus.RUNNING.value})
        usage["tokens_in"] = job.tokens_in
        t0 = self.clock.monotonic()
        n = 0
        finish: str | None = None
        sampled: int | None = None
        text: list[str] = []
        texts = TokenText()
        rep = job.replica
        allowed, probing = rep.breaker.allow()
        if probing is not None:
            self._escalate(job.step_id, probing)
        if not allowed:
            raise CircuitOpen(f"replica {rep.replica_id}'s circuit breaker is open",
                              data={"replica_id": rep.replica_id})
        verdict = False
        moved: Transition | None = None
        self.metrics.engine_requests.labels(pool_id=job.pool.pool_id).inc()
        stream = engine.stream(job.request)
        try:
            async for item in stream:
                if isinstance(item, Finish):
                    finish, sampled = item.reason, item.tokens
                    break
                assert isinstance(item, Delta)
                if job.reservation.capped and n >= job.reservation.tokens_out:
                    # The engine ignored max_tokens: never log a token beyond the budget.
                    raise BudgetExceeded(
                        f"output budget of {job.reservation.tokens_out} tokens reached "
                        f"({job.reservation.cap_budget})",
                        data={"budget": job.reservation.cap_budget,
                              "limit": job.reservation.tokens_out})
                raw = item.data if item.data is not None else item.text.encode()
                tok = TokenData(i=n, t=texts.push(raw), id=item.token_id,
                                b=base64.b64encode(raw).decode("ascii"))
                if job.verifier is not None:
                    job.verifier.check(tok)
                self.log.append(job.step_id, tok)
                text.append(tok.t)
                n += 1
                usage["tokens_out"] = n
                if n % self.metrics_every == 0:
                    elapsed = self.clock.monotonic() - t0
                    self.log.publish_ephemeral(job.step_id, MetricsData(
                        tokens_out=n, elapsed_ms=int(elapsed * 1000),
                        tokens_per_s=round(n / elapsed, 1) if elapsed else 0.0,
                        tokens_in=job.tokens_in,
                        cost_usd=self.prices.cost_usd(job.model, job.tokens_in, n),
                        reserved_tokens_out=job.reservation.tokens_out))
            if finish is None:
                raise Interrupted("engine stream ended without a finish_reason",
                                  data={"replica_id": rep.replica_id, "tokens_out": n})
            verdict = True
            moved = rep.breaker.success()
        except (EngineError, Interrupted) as err:
            verdict = True
            moved = rep.breaker.failure(f"{err.code.value}: {err.message}")
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()  # type: ignore[attr-defined]
            if not verdict:
                rep.breaker.release_probe()
            if moved is not None:
                self._escalate(job.step_id, moved)
        # Tokens the engine sampled: the frames plus any withheld as a stop string's.
        tokens_out = n if sampled is None else max(n, sampled)
        usage["tokens_out"] = tokens_out
        res = job.reservation
        if res.capped and finish == "length" and tokens_out >= res.tokens_out:
            # The engine was asked for at most the reservation: a `length` finish there is
            # the budget cutting the step, not the sampling limit (zero tokens over budget).
            raise BudgetExceeded(
                f"output budget of {res.tokens_out} tokens reached ({res.cap_budget})",
                data={"budget": res.cap_budget, "limit": res.tokens_out})
        if job.verifier is not None:
            job.verifier.finish(n)
        output, suggestions = job.shape.finish("".join(text), finish)
        for suggestion in suggestions:
            self.log.append(job.step_id, suggestion)
        decode_ms = int((self.clock.monotonic() - t0) * 1000)
        cost = self.prices.cost_usd(job.model, job.tokens_in, tokens_out)
        ident = job.pool.identity
        prov = Provenance(
            seed=job.request.seed, prompt_hash=job.prompt_hash, params_hash=job.params_hash,
            engine=ident.name, engine_version=ident.version,
            engine_build=ident.build_fingerprint, model_hash=ident.model_hash,
            pool_id=job.pool.pool_id, replica_id=job.replica.replica_id,
            tokens_in=job.tokens_in, tokens_out=tokens_out, cost_usd=cost,
            decode_time_ms=decode_ms,
            finish_reason=finish, policy_hash=job.policy_hash,
            price_table_version=self.prices.version,
        )
        end = EndData(provenance=prov, output=output)
        wall_ms = int((self.clock.monotonic() - job.submitted_at) * 1000)
        self.log.finish(job.step_id, end, {
            "status": StepStatus.SUCCEEDED.value, "tokens_in": job.tokens_in,
            "tokens_out": tokens_out, "cost_usd": cost, "wall_ms": wall_ms,
            "provenance": _enc.encode(prov).decode(),
        })
        self.metrics.steps_finished.labels(type=job.step_type,
                                           status=StepStatus.SUCCEEDED.value).inc()
