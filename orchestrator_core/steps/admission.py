"""Admission of a Step, whatever its type (NERVE-4003, NERVE-4021, NERVE-4023, NERVE-4025,
POLICY-3003).

Everything that can refuse a Step is checked before anything is stored, in this order:
the Run (in the caller's tenant), the ``client_token`` (a repeated token with the same
input returns its Step, unless that Step was interrupted by a crash: then the submission
is a new attempt of it, NERVE-4105; with another input it is ``CONFLICT``), the Run's
status, the server's cap on active Steps, the Run's policy (the type's own values), then,
by mode:

* a forked ``record`` Run serves the parent's Step the token names, if the parent had
  finished it at the checkpoint (NERVE-4005);
* ``replay``, and ``strict_replay`` of a type that is not run again, serve the recording
  matched by token, type and input hash;
* ``strict_replay`` of a type that runs again finds the recording (a failed one is
  served), then admits like ``record`` with the recording at hand;
* ``record``: the type's own ``admit``; in a Run with the exact-match cache on, an LLM
  type's may answer with an earlier Step of the tenant to serve instead (REC-7103).

A Step that serves a finished Step (the first two cases, a failed recording in the
third, and a cache hit) is stored already finished, in one insert, by reference to the
log that holds the frames and to their content hash; it has no task and copies no frame
(NERVE-4025).

A type's admission may await once (an LLM prompt's token count on the engine). From its
return until the Step is stored and started nothing awaits, so the budget reservation,
the queue check and the insert are one step of the event loop; the Run's status and the
active-Step cap are checked again there, and a concurrent submit that claimed the same
token in the meantime is answered as the repeated token it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from contracts.errors import AdmissionReject, Conflict, NotFound
from contracts.events import Provenance
from contracts.runs import Policy, Run, RunMode, RunStatus
from contracts.steps import Step, StepStatus, StepSubmit
from orchestrator_core import tracing, views
from orchestrator_core.canonical import (
    b3_as_recorded,
    b3_bytes,
    canonical_json,
    new_ordered_id,
)
from orchestrator_core.clock import iso_utc
from orchestrator_core.metrics_pools import on_rejected
from orchestrator_core.policy import redact
from orchestrator_core.replay import check_recorded_match
from orchestrator_core.rows import RunRow, RunUsage, StepRow
from orchestrator_core.steps.base import Admission, Plan, StepContext, StepRun
from orchestrator_core.steps.registry import StepKinds
from orchestrator_core.steps.runner import StepTasks

__all__ = ["Admitter"]

_enc = msgspec.json.Encoder()
_prov_decoder = msgspec.json.Decoder(Provenance)
_UNREAD_USAGE = RunUsage(0, 0, 0.0, 0, {})
"""Stands for a Run's usage in the view a Step is admitted with when nothing reads it: a
served Step (policy checks read the policy; serving reads the recording), and a Step of a
Run without token or cost budgets, or on a shared ledger (:meth:`Admitter._reads_usage`)."""


def _typed_hash(step_type: str, input_json: bytes) -> str:
    """``b3({"type": step_type, "input": input})`` from the input's canonical JSON, which
    is then encoded once: JCS orders ``input`` before ``type``."""
    return b3_bytes(b'{"input":' + input_json + b',"type":' + canonical_json(step_type)
                    + b"}")


def _cached_from(source: StepRow) -> str:
    """The provenance of a Step served from ``source`` by the exact-match cache: the
    source's, naming it in ``cached_from`` (REC-7103)."""
    assert source.provenance is not None  # a succeeded LLM Step has its block
    prov = _prov_decoder.decode(source.provenance)
    return _enc.encode(msgspec.structs.replace(prov, cached_from=source.step_id)).decode()


class _PolicyOnly(msgspec.Struct):
    policy: Policy


def _redacted_input(run_row: RunRow, input_value: Any) -> Any:
    """The Step input as stored: prompt and message contents redacted by the Run's policy
    (the input hash stays that of the submitted input, for idempotency and replay)."""
    policy = msgspec.json.decode(run_row.body, type=_PolicyOnly).policy
    if not policy.redact or not isinstance(input_value, dict):
        return input_value
    out = dict(input_value)
    if isinstance(out.get("prompt"), str):
        (out["prompt"],), _n = redact(policy, [out["prompt"]])
    if isinstance(out.get("messages"), list):
        texts, _n = redact(policy, [m["content"] for m in out["messages"]])
        out["messages"] = [{**m, "content": t} for m, t in zip(out["messages"], texts,
                                                               strict=True)]
    return out


class Admitter:
    """Admits Steps of every type and hands them to the runner.

    Args:
        ctx: the step context.
        kinds: the Step type registry.
        tasks: the runner.
    """

    def __init__(self, ctx: StepContext, kinds: StepKinds, tasks: StepTasks) -> None:
        self.ctx = ctx
        self.kinds = kinds
        self.tasks = tasks

    async def submit(self, run_id: str, body: StepSubmit, tenant: str) -> tuple[Step, bool]:
        """Accept a Step, idempotently by ``client_token`` (NERVE-4003).

        Returns:
            ``(step, created)``; ``created`` is False for a repeated client_token.

        Raises:
            NotFound, Conflict (token reused with another input, or the run is
            cancelled), AdmissionReject, PolicyDenied, Nondeterminism, and whatever the
            type's admission raises.
        """
        store = self.ctx.store
        run_row = store.get_run(run_id)
        if run_row is None or run_row.tenant != tenant:
            raise NotFound(f"no run {run_id}", data={"run_id": run_id})
        step_type, kind = self.kinds.of(body)
        input_value = msgspec.to_builtins(body.input)
        input_json = canonical_json(input_value)
        input_hash = _typed_hash(step_type, input_json)
        existing = store.get_step_by_token(run_id, body.client_token)
        if existing is not None:
            repeated = self._repeated(existing, body, step_type, input_value, input_hash)
            if existing.status != StepStatus.INTERRUPTED.value:
                return repeated, False
            # an interrupted Step is retried as a new attempt (NERVE-4105)
        attempt, retry_of = ((0, None) if existing is None else
                             (existing.attempt + 1, existing.retry_of or existing.step_id))
        self._check_active(run_row)
        redacted = _redacted_input(run_row, input_value)
        stored_input = (input_json if redacted is input_value
                        else canonical_json(redacted)).decode()
        self._check_room()
        mode = RunMode(run_row.mode)
        # A Step that can only be served from its recording needs the Run's policy and
        # lineage (STREAM-2014); one that may run also needs the Run's usage when a budget
        # reads it (:meth:`_reads_usage`). No admission reads the Run's forks.
        served_only = mode is RunMode.REPLAY or (mode is not RunMode.RECORD
                                                 and not kind.replay.reruns)
        run = views.run(run_row, _UNREAD_USAGE)
        if not served_only and self._reads_usage(run):
            run = views.run(run_row, store.run_usage(run_id))
        kind.check_policy(run, body)
        # a Step id grows with time, so its row and frames go where the last ones went
        adm = Admission(step_id=new_ordered_id("stp", self.ctx.clock.now()), run=run,
                        body=body, mode=mode, step_type=step_type, input_value=input_value,
                        input_hash=input_hash, attempt=attempt, retry_of=retry_of,
                        tenant=tenant)
        if mode is RunMode.RECORD:
            inherited = self.ctx.checkpoints.inherited_step(run, body.client_token)
            if inherited is not None:  # a fork serves the parent's history
                check_recorded_match(client_token=body.client_token, recorded=inherited,
                                     step_type=step_type, input_hash=input_hash,
                                     input_value=input_value)
                return self._serve(adm, stored_input, inherited, "inherited")
        elif mode is RunMode.REPLAY or not kind.replay.reruns:
            # Side effects never run again in any replay mode: their results are served.
            return self._serve(adm, stored_input, self._recorded(adm))
        else:
            recorded = self._recorded(adm, check_input=not kind.replay.inputs_first)
            if recorded.status != StepStatus.SUCCEEDED.value:  # served as it is
                return self._serve(adm, stored_input, self._recorded(adm))
            adm = dataclasses.replace(adm, recorded=recorded)
        plan = await kind.admit(adm)
        # No await from here until the Step is stored and started.
        try:
            latest = store.get_run(run_id)
            assert latest is not None
            self._check_active(latest)  # the Run may have been cancelled meanwhile
            self._check_room()
            if plan.cached is not None:  # the exact-match cache (REC-7103)
                served = self._serve(adm, stored_input, plan.cached, "cached")
                self.ctx.budgets.release(run_id, adm.step_id)  # its usage is stored now
                return served
            return self._start(adm, plan, stored_input)
        except BaseException:
            self.ctx.budgets.release(run_id, adm.step_id)
            raise

    # -- shared checks -----------------------------------------------------------------

    def _repeated(self, existing: StepRow, body: StepSubmit, step_type: str,
                  input_value: Any, input_hash: str) -> Step:
        """The answer to a token the Run already has: its Step, or ``CONFLICT`` when it
        was used with another input."""
        if existing.input_hash != b3_as_recorded({"type": step_type, "input": input_value},
                                                    input_hash, existing.input_hash):
            raise Conflict(
                f"client_token {body.client_token!r} was used with another input",
                data={"client_token": body.client_token, "step_id": existing.step_id,
                      "recorded_hash": existing.input_hash,
                      "submitted_hash": input_hash})
        return views.step(existing)

    def _reads_usage(self, run: Run) -> bool:
        """Whether admitting a Step of ``run`` reads the Run's usage: only a Run with a
        token or cost budget, on a store with no shared ledger (on PostgreSQL the ledger
        reads the usage under the Run's lock, PG-9106). Nothing else of an admission
        reads it, nor the Run's forks (NERVE-4042)."""
        b = run.budgets
        return self.ctx.budgets.ledger is None and (
            b.max_tokens_in is not None or b.max_tokens_out is not None
            or b.max_cost_usd is not None)

    @staticmethod
    def _check_active(run_row: RunRow) -> None:
        """The Run accepts Steps (it is not closed, NERVE-4103)."""
        if run_row.status != RunStatus.ACTIVE.value:
            raise Conflict(f"run {run_row.run_id} is {run_row.status}; it accepts "
                           "no steps", data={"field": "run_id", "run_id": run_row.run_id,
                                             "status": run_row.status})

    def _check_room(self) -> None:
        """The server has room for one more active Step (``max_active_steps``)."""
        cap = self.ctx.config.max_active_steps
        if self.ctx.log.active() >= cap:
            err = AdmissionReject(f"the server already has {cap} active steps",
                                  retry_after_ms=1000, data={"max_active_steps": cap})
            on_rejected(self.ctx.metrics, "", err)  # server-wide: no engine (OBS-8051)
            raise err

    def _recorded(self, adm: Admission, *, check_input: bool = True) -> StepRow:
        """The recorded Step this one replays, finished (NERVE-4023)."""
        run = adm.run
        assert run.replay_of is not None
        rec = self.ctx.store.get_step_by_token(run.replay_of, adm.body.client_token)
        check_recorded_match(client_token=adm.body.client_token, recorded=rec,
                             step_type=adm.step_type,
                             input_hash=adm.input_hash if check_input or rec is None
                             else rec.input_hash,
                             input_value=adm.input_value)
        assert rec is not None
        if not StepStatus(rec.status).terminal:
            raise Conflict("the recorded step has not finished yet",
                           data={"recorded_step_id": rec.step_id})
        return rec

    # -- storing and starting ----------------------------------------------------------

    def _insert(self, adm: Admission, stored_input: str, *, seed: int | None,
                provenance: Provenance | None, cache_key: str | None = None) -> StepRow | None:
        """Store the ``queued`` Step and open its log: the row stored, or None when a
        concurrent submit claimed the token first."""
        body = adm.body
        placement = getattr(body, "placement", None)
        row = StepRow(
            step_id=adm.step_id, run_id=adm.run.run_id, type=adm.step_type,
            client_token=body.client_token,
            input=stored_input, input_hash=adm.input_hash,
            placement=_enc.encode(placement).decode() if placement else None,
            status=StepStatus.QUEUED.value, seed=seed,
            created_at=iso_utc(self.ctx.clock.now()), last_seq=-1,
            replay_of_step=adm.recorded.step_id if adm.recorded else None,
            attempt=adm.attempt, retry_of=adm.retry_of,
            # what the Step consumes is added when it ends, or by recovery (NERVE-4040)
            provenance=_enc.encode(provenance).decode() if provenance else None,
            cache_key=cache_key,
        )
        if not self.ctx.store.insert_step(row):
            return None
        self.ctx.log.open(adm.step_id, adm.run.run_id)
        return row

    def _claimed(self, adm: Admission) -> tuple[Step, bool]:
        """A concurrent submit stored this token while this one was admitted: answer as
        for a repeated token."""
        existing = self.ctx.store.get_step_by_token(adm.run.run_id, adm.body.client_token)
        if existing is None:
            raise Conflict("client_token was claimed concurrently; retry to read the step",
                           data={"client_token": adm.body.client_token})
        return self._repeated(existing, adm.body, adm.step_type, adm.input_value,
                              adm.input_hash), False

    def _start(self, adm: Admission, plan: Plan, stored_input: str) -> tuple[Step, bool]:
        """Apply the wall-clock budgets, store the Step and start its task (POLICY-3000)."""
        ctx, run = self.ctx, adm.run
        now, mono = ctx.clock.now(), ctx.clock.monotonic()
        run_deadline = (plan.reservation.deadline_s if plan.reservation is not None
                        else ctx.budgets.wall_deadline(run, now))
        deadline = mono + (run_deadline - now)
        if adm.body.budgets.max_wall_ms is not None:
            deadline = min(deadline, mono + adm.body.budgets.max_wall_ms / 1000.0)
        prov = plan.provenance or Provenance(
            tokens_in=0, tokens_out=0, cost_usd=0.0, policy_hash=run.policy_hash,
            price_table_version=ctx.config.prices.version, executor=plan.executor,
            input_hash=adm.input_hash)
        row = self._insert(adm, stored_input, seed=plan.seed, provenance=prov,
                           cache_key=plan.cache_key)
        if row is None:
            ctx.budgets.release(run.run_id, adm.step_id)
            return self._claimed(adm)
        self.tasks.start(StepRun(ctx.log, adm.step_id, run.run_id, adm.step_type,
                                 adm.mode.value, plan, prov, mono, deadline))
        # the row as stored: no await since the insert, so the task has not started
        return views.step(row), True

    def _serve(self, adm: Admission, stored_input: str, rec: StepRow,
               what: str = "recorded") -> tuple[Step, bool]:
        """Store a Step that serves a finished Step's frames by reference (NERVE-4021,
        NERVE-4025): one insert, already terminal, with the recording's status, usage,
        provenance, error and ``last_seq``, naming the Step whose rows hold the frames
        and their content hash. No frame is copied and no task runs; the frames are
        cached for the Step's readers as a just-finished Step's are. A Step served by
        the exact-match cache (``what`` is ``cached``) replays no Step: its provenance
        names the source in ``cached_from`` instead (REC-7103).

        Raises:
            Conflict: the ``what`` Step has not finished, its log does not end with its
                terminal frame at its ``last_seq``, or its frames no longer match the
                content hash kept for them (nothing is stored).
        """
        if not StepStatus(rec.status).terminal:
            raise Conflict(f"the {what} step has not finished yet",
                           data={"recorded_step_id": rec.step_id})
        ctx = self.ctx
        cached = what == "cached"
        frames_of, digest, frames = self._sealed(rec, what)
        body = adm.body
        placement = getattr(body, "placement", None)
        row = StepRow(
            step_id=adm.step_id, run_id=adm.run.run_id, type=adm.step_type,
            client_token=body.client_token, input=stored_input, input_hash=adm.input_hash,
            placement=_enc.encode(placement).decode() if placement else None,
            status=rec.status, seed=rec.seed, created_at=iso_utc(ctx.clock.now()),
            tokens_in=rec.tokens_in, tokens_out=rec.tokens_out, cost_usd=rec.cost_usd,
            wall_ms=rec.wall_ms, provenance=_cached_from(rec) if cached else rec.provenance,
            error=rec.error, last_seq=rec.last_seq,
            replay_of_step=None if cached else rec.step_id, frames_of=frames_of,
            frames_hash=digest, attempt=adm.attempt, retry_of=adm.retry_of)
        if rec.frames_hash is not None:  # _sealed checked the frames against it
            created = ctx.store.insert_step(row)
        else:  # the first reference keeps the hash, in the insert's transaction
            created, kept = ctx.store.insert_served(row, frames_of)
            if kept != digest:
                raise self._changed(rec, what, kept, digest)
        if not created:
            return self._claimed(adm)
        ctx.log.open_served(adm.step_id, adm.run.run_id, frames, digest)
        ctx.metrics.steps_served.labels(type=adm.step_type, source=what).inc()
        tracing.step_served(adm.step_id, adm.run.run_id, adm.step_type, adm.mode.value,
                            rec.status)
        return views.step(row), True

    def _sealed(self, rec: StepRow, what: str) -> tuple[str, str, list[bytes]]:
        """The Step whose rows hold ``rec``'s frames (``rec`` itself, or the Step it is
        served from), the frames' content hash and the frames, SSE-framed.

        The hash is computed on every reference; the first reference keeps it on the
        Step that holds the rows, in the transaction that inserts the referencing Step
        (:meth:`_serve`); every later one checks the frames against it (NERVE-4025).

        Raises:
            Conflict: the log does not end with a terminal frame at ``rec.last_seq``, or
                it no longer matches its content hash.
        """
        frames_of = rec.frames_of or rec.step_id
        sealed = self.ctx.log.sealed_frames(frames_of)
        data = {"recorded_step_id": rec.step_id}
        if sealed is None or len(sealed[0]) != rec.last_seq + 1:
            raise Conflict(f"the {what} step's log has no terminal frame at its last_seq "
                           f"{rec.last_seq}", data=data)
        frames, digest = sealed
        if rec.frames_hash is not None and digest != rec.frames_hash:
            raise self._changed(rec, what, rec.frames_hash, digest)
        return frames_of, digest, frames

    @staticmethod
    def _changed(rec: StepRow, what: str, kept: str, actual: str) -> Conflict:
        """The refusal of a log whose frames no longer match the hash kept for them."""
        return Conflict(f"the {what} step's frames no longer match their content hash",
                        data={"recorded_step_id": rec.step_id, "frames_hash": kept,
                              "actual": actual})
