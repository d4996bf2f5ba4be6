"""The one wrapper around every Step type: its task, its terminal frame, its deadline, its
usage and its provenance (DESIGN.md §1-§2, NERVE-4020, POLICY-3000, STREAM-2002).

Each Step runs in its own task under a cancel scope held here. Whatever its type, the
wrapper applies, once:

* the terminal-frame guard: exactly one terminal frame is committed, together with the
  Step's terminal status, whatever happens (success, typed error, cancel, deadline,
  shutdown, an unexpected fault, or work that returned without a result);
* the wall-clock deadline: the earlier of the Run's deadline and the Step's own
  ``budgets.max_wall_ms`` from its submission. The work is abandoned wherever it waits (a
  slot, a lock, an engine, a tool, new Facts) and the Step ends ``DEADLINE_EXCEEDED``; a
  Step whose deadline passed before it could start ends so without starting. Work that
  cannot be interrupted (a file-system operation in a worker thread) completes and is
  recorded;
* budget accounting: the usage (tokens, cost from the price table, wall time) is stored
  on the Step whatever its outcome, and its reservation is released when its task ends;
* the provenance block, on ``end`` and on ``error`` alike, with the fields of its type
  (specs/20_stream_and_replay.md §4).

A Step that serves a recording (``replay``) runs no task here: admission stores it
finished, by reference to the recording's frames (NERVE-4025). Recovery after a crash
closes every unfinished Step with an ``INTERRUPTED`` frame that records what the Step
had consumed (NERVE-4040).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.abc
import msgspec

from contracts.errors import (
    Cancelled,
    DeadlineExceeded,
    Internal,
    Interrupted,
    OrchestratorError,
    OutputTooLarge,
)
from contracts.events import (
    EffectEndData,
    EndData,
    ErrorData,
    FrameType,
    Provenance,
)
from contracts.steps import StepStatus
from orchestrator_core import cluster, tracing
from orchestrator_core.bounds import oversize
from orchestrator_core.metrics_pools import on_step_finished
from orchestrator_core.rows import StepRow
from orchestrator_core.steps.base import Done, StepContext, StepRun

__all__ = ["StepTasks"]

log = logging.getLogger("orchestrator.steps")

_enc = msgspec.json.Encoder()
_prov_decoder = msgspec.json.Decoder(Provenance)
_STATUS_OF = {"CANCELLED": StepStatus.CANCELLED, "INTERRUPTED": StepStatus.INTERRUPTED}


@contextmanager
def _no_deadline() -> Iterator[None]:
    yield None


class StepTasks:
    """Runs Steps in the orchestrator's task group and guarantees one terminal frame each.

    Args:
        ctx: the step context.
    """

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.tg: anyio.abc.TaskGroup | None = None
        self.scopes: dict[str, anyio.CancelScope] = {}
        self.cancel_requested: dict[str, str] = {}

    # -- control -----------------------------------------------------------------------

    def start(self, sr: StepRun) -> None:
        """Run an admitted Step's plan in its own task.

        Its span starts here, in the admitting request's context, and is made current in
        the task (OBS-8011).

        Raises:
            RuntimeError: the orchestrator is not running.
        """
        if self.tg is None:
            raise RuntimeError("the orchestrator is not running")
        sr.span = tracing.step_admitted(sr.step_id, sr.run_id, sr.step_type, sr.mode)
        self._spawn(self._execute, sr)

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self.tg is None:
            raise RuntimeError("the orchestrator is not running")
        self.tg.start_soon(fn, *args)

    def cancel(self, step_id: str, reason: str = "step cancelled") -> bool:
        """Request cancellation (STREAM-2002): here when the Step is live here, else of the
        process that runs it on a shared store (PG-9111); False when neither."""
        return (self.cancel_local(step_id, reason)
                or cluster.request_cancel(self.ctx.store, step_id, reason))

    def cancel_local(self, step_id: str, reason: str = "step cancelled") -> bool:
        """Cancel a Step live here (STREAM-2002); False when it is not."""
        if not self.ctx.log.is_live(step_id):
            return False
        self.cancel_requested[step_id] = reason
        scope = self.scopes.get(step_id)
        if scope is not None:
            scope.cancel()
        return True

    def fence(self, step_id: str) -> None:
        """Stop the task of a Step another process adopted, without a terminal frame: the
        adopter wrote its ``INTERRUPTED`` and the event log drops this one's writes
        [PG-9108]."""
        if step_id in self.scopes:
            self.cancel_requested[step_id] = "adopted by another process"
            self.scopes[step_id].cancel()

    def _scope(self, step_id: str) -> anyio.CancelScope:
        """The Step's cancel scope; already cancelled if a cancel arrived before the task."""
        scope = anyio.CancelScope()
        self.scopes[step_id] = scope
        if step_id in self.cancel_requested:
            scope.cancel()
        return scope

    # -- the wrapper -------------------------------------------------------------------

    async def _execute(self, sr: StepRun) -> None:
        plan = sr.plan
        assert plan is not None
        ctx = self.ctx
        scope = self._scope(sr.step_id)
        try:
            with tracing.step_bound(sr.span, sr.step_id, sr.run_id), scope:
                try:
                    left = sr.deadline - ctx.clock.monotonic()
                    if left <= 0:
                        raise DeadlineExceeded("the step or run wall-clock budget ran out",
                                               data={"budget": "max_wall_ms"})
                    with (ctx.clock.move_on_after(left) if math.isfinite(left)
                          else _no_deadline()) as wall:
                        if plan.lock is None:
                            self._end(sr, await plan.execute(sr))
                        else:
                            async with plan.lock:  # held until ``end`` is committed
                                self._end(sr, await plan.execute(sr))
                    if wall is not None and wall.cancelled_caught:
                        raise DeadlineExceeded("the step or run wall-clock budget ran out",
                                               data={"budget": "max_wall_ms"})
                except OrchestratorError as err:
                    self._fail(sr, err)
                except Exception as exc:
                    log.exception("step %s failed unexpectedly", sr.step_id)
                    self._fail(sr, Internal(f"{type(exc).__name__}: {exc}"))
            if ctx.log.is_live(sr.step_id):
                self._fail(sr, Cancelled(self.cancel_requested.get(sr.step_id,
                                                                   "step cancelled"))
                           if scope.cancel_called
                           else Internal("the step ended without a result"))
        except anyio.get_cancelled_exc_class():
            if ctx.log.is_live(sr.step_id):
                self._fail(sr, Interrupted("server shutting down"))
            raise
        finally:
            ctx.budgets.release(sr.run_id, sr.step_id)
            self.scopes.pop(sr.step_id, None)
            self.cancel_requested.pop(sr.step_id, None)
            ctx.metrics.step_latency.labels(type=sr.step_type, mode=sr.mode).observe(
                ctx.clock.monotonic() - sr.submitted_at)

    # -- terminal frames ---------------------------------------------------------------

    def _usage(self, sr: StepRun) -> tuple[Provenance, dict[str, Any]]:
        """The Step's provenance block and usage columns as of now (NERVE-4020)."""
        now = self.ctx.clock.monotonic()
        wall_ms = int((now - sr.submitted_at) * 1000)
        plan = sr.plan
        model = plan.model if plan is not None else None
        cost = (self.ctx.config.prices.cost_usd(model, sr.tokens_in, sr.tokens_out)
                if model is not None else 0.0)
        if plan is not None and plan.llm:
            decode_ms = (int((now - sr.decode_started) * 1000)
                         if sr.decode_started is not None else 0)
            prov = msgspec.structs.replace(
                sr.provenance, tokens_in=sr.tokens_in, tokens_out=sr.tokens_out,
                cost_usd=cost, decode_time_ms=decode_ms, finish_reason=sr.finish_reason)
        else:
            prov = msgspec.structs.replace(
                sr.provenance, tokens_in=sr.tokens_in, tokens_out=sr.tokens_out,
                cost_usd=cost, wall_ms=wall_ms)
        return prov, {"tokens_in": sr.tokens_in, "tokens_out": sr.tokens_out,
                      "cost_usd": cost, "wall_ms": wall_ms,
                      "provenance": _enc.encode(prov).decode()}

    def _end(self, sr: StepRun, done: Done) -> None:
        """Commit ``end`` with the output and the provenance block.

        Raises:
            OutputTooLarge: a non-LLM output over ``max_recorded_value_bytes``
                (POLICY-3030): nothing of it is recorded.
        """
        plan = sr.plan
        assert plan is not None
        if not plan.llm:
            limit = self.ctx.config.max_recorded_value_bytes
            refused = oversize(done.output, limit)
            if refused is not None:
                bound = (f"{limit} bytes of JSON" if refused["reason"] == "size"
                         else f"{refused['limit_depth']} levels of nesting")
                raise OutputTooLarge(f"the {sr.step_type} output is over the server's bound "
                                     f"on recorded values ({bound})",
                                     data={"field": "output", **refused})
        prov, usage = self._usage(sr)
        end: EndData | EffectEndData = (
            EndData(provenance=prov, output=done.output) if plan.llm
            else EffectEndData(output=done.output, executor=plan.executor,
                               duration_ms=done.duration_ms, provenance=prov))
        self.ctx.log.finish(sr.step_id, end, {"status": StepStatus.SUCCEEDED.value, **usage})
        tracing.step_finished(sr.span, sr.step_id, sr.run_id, sr.step_type,
                              StepStatus.SUCCEEDED.value, prov)
        on_step_finished(self.ctx.metrics, self.ctx.pools, sr, self.ctx.clock.monotonic())
        self.ctx.metrics.steps_finished.labels(type=sr.step_type,
                                               status=StepStatus.SUCCEEDED.value).inc()

    def _fail(self, sr: StepRun, err: OrchestratorError) -> None:
        """Commit an ``error`` frame carrying the provenance block (NERVE-4020)."""
        status = _STATUS_OF.get(err.code.value, StepStatus.FAILED)
        env = err.envelope()
        prov, usage = self._usage(sr)
        frame = ErrorData(code=env.code, message=env.message, retriable=env.retriable,
                          retry_after_ms=env.retry_after_ms, data=env.data, provenance=prov)
        self.ctx.log.finish(sr.step_id, frame, {"status": status.value,
                                                "error": _enc.encode(env).decode(), **usage})
        tracing.step_finished(sr.span, sr.step_id, sr.run_id, sr.step_type, status.value,
                              prov, env.code.value)
        on_step_finished(self.ctx.metrics, self.ctx.pools, sr, self.ctx.clock.monotonic(),
                         err.code.value if status is StepStatus.CANCELLED else None)
        self.ctx.metrics.steps_finished.labels(type=sr.step_type, status=status.value).inc()

    # -- recovery ----------------------------------------------------------------------

    def recover(self, startup: bool = True) -> int:
        """Close every Step a crash left ``queued``/``running`` with an ``INTERRUPTED``
        error frame, appended right after its last committed frame (no gaps), recording
        what it consumed (NERVE-4040): ``tokens_out`` is the number of its committed
        ``token`` frames, ``tokens_in`` its prompt once it had started, ``cost_usd`` from
        the price table, ``wall_ms`` from its ``created_at``.

        On a store several processes share, the Steps closed are only those this process
        just adopted from dead processes (PG-9102, :func:`cluster.unfinished`).

        Args:
            startup: the server is starting; False: a periodic reap of dead processes
                (nothing on SQLite).

        Returns:
            How many Steps were interrupted.
        """
        ctx = self.ctx
        store = ctx.store
        rows = cluster.unfinished(store, ctx.config, startup=startup)
        for row in rows:
            step_id = row.step_id
            seq = store.max_seq(step_id) + 1
            types = [t for _s, t, _d in store.read_events(step_id, -1)]
            tokens = types.count(FrameType.TOKEN.value)
            started = FrameType.STARTED.value in types
            prov = self._stored_provenance(row)
            llm = prov.engine is not None
            tokens_in = prov.tokens_in if llm and started else 0
            model = msgspec.json.decode(row.input).get("model") if llm else None
            cost = ctx.config.prices.cost_usd(model, tokens_in, tokens) if model else 0.0
            created = dt.datetime.fromisoformat(row.created_at).timestamp()
            wall_ms = max(0, int((ctx.clock.now() - created) * 1000))
            prov = msgspec.structs.replace(prov, tokens_in=tokens_in, tokens_out=tokens,
                                           cost_usd=cost, **({} if llm else
                                                             {"wall_ms": wall_ms}))
            env = Interrupted("the server restarted while this step ran" if startup else
                              "the server process running this step stopped",
                              data={"step_id": step_id}).envelope()
            frame = ErrorData(code=env.code, message=env.message, retriable=env.retriable,
                              data=env.data, provenance=prov)
            store.commit_events(
                [(step_id, seq, row.run_id, FrameType.ERROR.value, _enc.encode(frame))],
                [(step_id, {"status": StepStatus.INTERRUPTED.value, "last_seq": seq,
                            "error": _enc.encode(env).decode(), "tokens_in": tokens_in,
                            "tokens_out": tokens, "cost_usd": cost, "wall_ms": wall_ms,
                            "provenance": _enc.encode(prov).decode()})])
        return len(rows)

    def _stored_provenance(self, row: StepRow) -> Provenance:
        """The block a Step stored at admission; a Step stored without one (a served
        recording, or a store written before every type had provenance) gets the fields
        every type has."""
        if row.provenance:
            return _prov_decoder.decode(row.provenance)
        run = self.ctx.store.get_run(row.run_id)
        return Provenance(tokens_in=0, tokens_out=0, cost_usd=0.0,
                          policy_hash=run.policy_hash if run else "",
                          price_table_version=self.ctx.config.prices.version,
                          input_hash=row.input_hash)
