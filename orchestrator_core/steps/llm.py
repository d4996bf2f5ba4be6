"""``llm_call`` and ``llm_plan``: a completion on a placed engine replica (NERVE-4010,
NERVE-4012, NERVE-4013, NERVE-4021, NERVE-4022, POLICY-3000, POLICY-3003, POLICY-3004).

Admission checks the input and sampling parameters, shapes the output (a
``response_contract``, or a plan's tool menu and intents envelope), places the Step
(pinned to the recorded replica in ``strict_replay``, after comparing every determinism
input with the recording), redacts the prompt; in ``record`` it computes the exact-match
cache key and, in a Run with the cache on, may serve the Step from an earlier one with
no engine request (REC-7101, :mod:`orchestrator_core.exact_cache`); it counts the
prompt's tokens on the engine (the one await of admission: ``EngineAdapter.aprepare``),
checks the context, the pool's queue and the budgets, and reserves the output tokens and
cost.

The work waits for a slot on the replica, emits ``started``, streams the engine's
tokens as ``token`` frames (each checked against the recording before it is appended in
``strict_replay``) and hands the output to the runner, which writes ``end``. The
replica's circuit breaker is asked once the slot is held, and told the verdict.
"""

from __future__ import annotations

import base64
import math
from typing import Any, ClassVar

import anyio
import msgspec

from contracts.errors import (
    BudgetExceeded,
    CircuitOpen,
    ContextBudget,
    EngineError,
    Interrupted,
    InvalidParams,
    OrchestratorError,
    QueueFull,
)
from contracts.events import (
    MetricsData,
    PlacementDecision,
    Provenance,
    StartedData,
    TokenData,
)
from contracts.runs import PlacementPin, Run, RunMode
from contracts.steps import LlmCallSubmit, LlmPlanSubmit
from orchestrator_core import tracing
from orchestrator_core.breaker import Transition
from orchestrator_core.canonical import b3, b3_as_recorded, derive_seed
from orchestrator_core.exact_cache import cache_key, cached_plan
from orchestrator_core.metrics import PRIORITY
from orchestrator_core.metrics_pools import (
    engine_of_model,
    latency_labels,
    on_rejected,
    place_counted,
    task_labels,
)
from orchestrator_core.planning import (
    ContractShape,
    OutputShape,
    PlanShape,
    check_contract_schema,
    intents_schema,
    menu_text,
    tool_menu,
)
from orchestrator_core.policy import check_allowed, redact
from orchestrator_core.pools import Replica
from orchestrator_core.prompts import rendered_of
from orchestrator_core.replay import (
    TokenVerifier,
    check_determinism_inputs,
    check_recorded_match,
    recorded_params,
    same_build,
)
from orchestrator_core.steps.base import Admission, Done, Plan, ReplayRule, StepContext, StepRun
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter, Finish
from worker_adapters.token_bytes import TokenText

__all__ = ["KINDS", "Llm"]

_prov_decoder = msgspec.json.Decoder(Provenance)
METRICS_EVERY = 16
"""An ephemeral ``metrics`` frame every this many tokens (STREAM-2003)."""


class Llm:
    """``llm_call`` and ``llm_plan`` Steps.

    Args:
        ctx: the step context (pools, budgets, store, log, clock, config, metrics).
    """

    submits: ClassVar[tuple[type[msgspec.Struct], ...]] = (LlmCallSubmit, LlmPlanSubmit)
    replay: ClassVar[ReplayRule] = ReplayRule(
        record="runs on a placed engine replica",
        strict_replay="runs again on the recorded replica; every token is compared",
        reruns=True, inputs_first=True)

    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx

    def check_policy(self, run: Run, body: LlmCallSubmit | LlmPlanSubmit) -> None:
        """The Step type and model; for a plan, every menu tool in menu order."""
        step_type = "llm_plan" if isinstance(body, LlmPlanSubmit) else "llm_call"
        check_allowed(run.policy, step_type=step_type, model=body.input.model)
        if isinstance(body, LlmPlanSubmit):
            for tool in tool_menu(self.ctx.flow(run.flow_id).tools, body.input.tools):
                check_allowed(run.policy, step_type=step_type, tool=tool.name)

    def _output_shape(self, run: Run, body: LlmCallSubmit | LlmPlanSubmit) -> \
            tuple[OutputShape, dict[str, Any] | None, str | None]:
        """``(shape, strict json_schema, menu system text)`` of an LLM Step; for a plan
        the schema is the strict intents envelope (NERVE-4010, NERVE-4013)."""
        if isinstance(body, LlmPlanSubmit):
            inp = body.input
            menu = tool_menu(self.ctx.flow(run.flow_id).tools, inp.tools)
            text = menu_text(menu, inp.max_intents) if inp.menu == "system" else None
            return (PlanShape(menu, inp.max_intents),
                    intents_schema(menu, inp.max_intents), text)
        contract = body.input.response_contract
        if contract is None:
            return OutputShape(), None, None
        check_contract_schema(contract)
        return ContractShape(contract), contract, None

    async def admit(self, adm: Admission) -> Plan:
        """Validate, place, redact, count, check and reserve (see the module docstring);
        a refusal counts in ``tasks_rejected_total`` (OBS-8051).

        Raises:
            InvalidParams, InvalidModel, ContextBudget, PolicyDenied, Nondeterminism,
            DeterminismInputsDiffer, PoolUnavailable, PoolUnready, CircuitOpen,
            QueueFull, BudgetExceeded, EngineError.
        """
        try:
            return await self._admit(adm)
        except OrchestratorError as err:
            on_rejected(self.ctx.metrics, engine_of_model(self.ctx.pools, adm.body.input.model),
                        err)
            raise

    async def _admit(self, adm: Admission) -> Plan:
        ctx, run, body, step_type = self.ctx, adm.run, adm.body, adm.step_type
        inp = body.input
        if (inp.messages is None) == (inp.prompt is None):
            raise InvalidParams(f"{step_type} input needs exactly one of messages or prompt")
        shape, json_schema, menu = self._output_shape(run, body)
        prm = inp.params
        if prm.max_tokens < 1 or prm.temperature < 0 or prm.top_k < 0 or not (
                0 < prm.top_p <= 1) or not (0 <= prm.min_p <= 1) or prm.repeat_penalty <= 0:
            raise InvalidParams("sampling params out of range",
                                data={"params": msgspec.to_builtins(prm)})
        seed = prm.seed if prm.seed is not None else derive_seed(run.seed, body.client_token)
        placement = body.placement or run.pool_policy.placement
        recorded = adm.recorded
        rec_prov: Provenance | None = None
        if recorded is not None:
            # Determinism inputs are compared first, so a changed seed or params is named
            # as such (DETERMINISM_INPUTS_DIFFER); any other input change is NONDETERMINISM.
            assert recorded.provenance is not None  # admission served a failed recording
            rec_prov = _prov_decoder.decode(recorded.provenance)
            rec_replica = rec_prov.replica_id or ""
            found = ctx.pools.find_replica(rec_replica)
            placement = PlacementPin(pool_id=found[0].pool_id if found
                                     else rec_prov.pool_id or "", replica_id=rec_replica)
        pool, replica, decision = place_counted(ctx.metrics, ctx.pools, inp.model, placement)
        engine = replica.engine()
        engine.check_seed(seed)
        messages = ([msgspec.to_builtins(m) for m in inp.messages]
                    if inp.messages is not None else None)
        prompt = inp.prompt
        if messages is not None:
            texts, redactions = redact(run.policy, [m["content"] for m in messages])
            messages = [{**m, "content": t} for m, t in zip(messages, texts, strict=True)]
        elif prompt is not None:
            (prompt,), redactions = redact(run.policy, [prompt])
        else:  # unreachable: exactly one of messages/prompt was checked above
            raise InvalidParams("llm_call input needs exactly one of messages or prompt")
        if menu is not None:  # the server-authored tool menu, shown as a system message
            if messages is not None:
                messages = [{"role": "system", "content": menu}, *messages]
            else:
                prompt = f"{menu}\n\n{prompt}"
        params = {k: v for k, v in msgspec.to_builtins(prm).items() if k != "seed"}
        fallback: str | None = None
        if json_schema is not None:
            json_schema, fallback = _constrain(
                engine, shape, json_schema, body, params=params,
                recorded_params_hash=rec_prov.params_hash if rec_prov is not None else None)
            params["json_schema"] = json_schema  # constrained decoding is a determinism input
        hashed_prompt = {"messages": messages} if messages is not None else {"prompt": prompt}
        prompt_hash, params_hash = b3(hashed_prompt), b3(params)
        model_cfg = pool.models[inp.model]
        key = None
        if adm.mode is RunMode.RECORD:  # the exact-match cache (REC-7101, REC-7102)
            key = cache_key(tenant=adm.tenant, step_type=step_type, input_hash=adm.input_hash,
                            seed=seed, prompt_hash=prompt_hash, params_hash=params_hash,
                            policy_hash=run.policy_hash, identity=pool.identity,
                            price_table_version=ctx.config.prices.version)
            served = cached_plan(ctx, adm, key, model=inp.model, max_tokens=prm.max_tokens,
                                 context_tokens=model_cfg.context_tokens)
            if served is not None:
                return served
        prepared = await engine.aprepare(prompt=prompt, messages=messages)
        # From here until the runner starts the Step nothing awaits: the queue check, the
        # budget reservation and the insert are one step of the event loop (POLICY-3000).
        if prepared.tokens_in + prm.max_tokens > model_cfg.context_tokens:
            raise ContextBudget(
                f"prompt ({prepared.tokens_in} tokens) + max_tokens ({prm.max_tokens}) "
                f"exceeds the context of {model_cfg.context_tokens} tokens",
                data={"tokens_in": prepared.tokens_in, "max_tokens": prm.max_tokens,
                      "context_tokens": model_cfg.context_tokens})
        rendered_hash, template = rendered_of(prepared, inp.prompt,
                                              limit_bytes=ctx.config.max_recorded_value_bytes)
        ident = pool.identity
        verifier = None
        if rec_prov is not None and recorded is not None:
            rec_settings = ctx.store.engine_build(rec_prov.engine_build or "")
            # a recording made before RFC 8785 keeps its hashes (NERVE-4048)
            prompt_hash = b3_as_recorded(hashed_prompt, prompt_hash,
                                         rec_prov.prompt_hash or "")
            params_hash = b3_as_recorded(params, params_hash, rec_prov.params_hash or "")
            check_determinism_inputs(rec_prov, {
                "prompt_hash": prompt_hash, "params_hash": params_hash, "seed": seed,
                "engine": ident.name, "engine_version": ident.version,
                "engine_build": same_build(rec_prov, rec_settings, engine=ident.name,
                                           version=ident.version,
                                           fingerprint=ident.build_fingerprint,
                                           settings=ident.settings),
                "model_hash": ident.model_hash,
                "replica_id": replica.replica_id, "policy_hash": run.policy_hash,
                "rendered_hash": rendered_hash,
            }, details={
                "params_hash": {"key": "params", "current": params,
                                "recorded": recorded_params(
                                    recorded.type, recorded.input,
                                    msgspec.to_builtins(body.input), params)},
                "engine_build": {"key": "settings", "current": ident.settings,
                                 "recorded": msgspec.json.decode(rec_settings)
                                 if rec_settings is not None else None},
            })
            check_recorded_match(client_token=body.client_token, recorded=recorded,
                                 step_type=step_type, input_hash=adm.input_hash,
                                 input_value=adm.input_value)
            tokens = [d for _s, t, d in ctx.log.read_rows(recorded.step_id)
                      if t == "token"]
            verifier = TokenVerifier(tokens, run_id=run.run_id, step_id=adm.step_id)
        if pool.queued() >= pool.config.queue_capacity:
            raise QueueFull(f"pool {pool.pool_id} queue is full "
                            f"({pool.config.queue_capacity} waiting)",
                            retry_after_ms=int(replica.avg_step_ms),
                            data={"pool_id": pool.pool_id})
        res = ctx.budgets.admit(run, adm.step_id, body.budgets, model=inp.model,
                                tokens_in=prepared.tokens_in, max_tokens=prm.max_tokens,
                                now_s=ctx.clock.now())
        job = _Job(ctx=ctx, pool_id=pool.pool_id, replica=replica, decision=decision,
                   step_type=step_type, model=inp.model, tokens_in=prepared.tokens_in,
                   redactions=redactions, verifier=verifier, shape=shape,
                   reserved=res.tokens_out, capped=res.capped, cap_budget=res.cap_budget,
                   request=CompletionRequest(
                       prompt=prepared.text, seed=seed, temperature=prm.temperature,
                       top_k=prm.top_k, top_p=prm.top_p, min_p=prm.min_p,
                       repeat_penalty=prm.repeat_penalty,
                       max_tokens=min(prm.max_tokens, res.tokens_out), stop=tuple(prm.stop),
                       json_schema=json_schema))
        if rendered_hash is not None:  # what the engine is shown is kept (NERVE-4091)
            ctx.store.record_prompt_text(rendered_hash, prepared.text)
        prov = Provenance(
            seed=seed, prompt_hash=prompt_hash, params_hash=params_hash, engine=ident.name,
            engine_version=ident.version, engine_build=ident.build_fingerprint,
            model_hash=ident.model_hash, pool_id=pool.pool_id, replica_id=replica.replica_id,
            tokens_in=prepared.tokens_in, tokens_out=0, cost_usd=0.0,
            policy_hash=run.policy_hash, price_table_version=ctx.config.prices.version,
            rendered_hash=rendered_hash, template=template, fallback=fallback)
        return Plan(execute=job.run, provenance=prov, llm=True,
                    model=inp.model, seed=seed, reservation=res, cache_key=key)


def _constrain(engine: EngineAdapter, shape: OutputShape, schema: dict[str, Any],
               body: LlmCallSubmit | LlmPlanSubmit, *, params: dict[str, Any],
               recorded_params_hash: str | None) -> tuple[dict[str, Any], str | None]:
    """The schema decoding is constrained to, and the plan's fallback if any (NERVE-4094).

    A response contract the engine cannot express is refused. A plan whose strict intents
    schema the engine cannot constrain to (a tool schema its grammar cannot express, or
    no constrained decoding at all) is refused unless its input says ``fallback:
    "allow"``, or it strict-replays a recording made under that fallback (its
    ``params_hash`` is that of ``params`` with the looser schema: a recording made before
    the fallback was refused); then it runs under the envelope only (``envelope``; every
    suggestion's arguments are still validated, NERVE-4011) or unconstrained
    (``unconstrained``).

    Raises:
        InvalidParams: the schema cannot be constrained to and no fallback is allowed;
            ``data.field`` is ``input.tools`` or ``input.model``, ``data.fallback`` the
            fallback refused.
    """
    if not isinstance(shape, PlanShape) or not isinstance(body, LlmPlanSubmit):
        engine.check_constraint(schema)
        return schema, None
    def allowed(under: dict[str, Any]) -> bool:
        if body.input.fallback == "allow":
            return True
        if recorded_params_hash is None:
            return False
        hashed = {**params, "json_schema": under}
        return b3_as_recorded(hashed, b3(hashed), recorded_params_hash) == recorded_params_hash

    if engine.constrained_decoding is None:
        if not allowed(schema):
            raise InvalidParams(
                "the engine of this model cannot constrain decoding to the intents schema; "
                'set input.fallback to "allow" to run the plan unconstrained',
                data={"field": "input.model", "fallback": "unconstrained"})
        return schema, "unconstrained"
    loose = intents_schema(shape.tools, shape.max_intents, strict=False)
    try:
        engine.check_constraint(schema)
        return schema, None
    except InvalidParams as exc:
        if not allowed(loose):
            raise InvalidParams(
                "the engine cannot constrain decoding to the schema of a menu tool; "
                'set input.fallback to "allow" to constrain the intents envelope only',
                data={"field": "input.tools", "fallback": "envelope",
                      "reason": exc.message}) from exc
    engine.check_constraint(loose)
    return loose, "envelope"


class _Job:
    """One admitted completion: wait for a slot, stream, verify, shape the output."""

    def __init__(self, *, ctx: StepContext, pool_id: str, replica: Replica,
                 decision: PlacementDecision,
                 step_type: str, model: str, tokens_in: int, redactions: int,
                 verifier: TokenVerifier | None, shape: OutputShape, reserved: int,
                 capped: bool, cap_budget: str, request: CompletionRequest) -> None:
        self.ctx = ctx
        self.pool_id = pool_id
        self.replica = replica
        self.decision = decision
        self.step_type = step_type
        self.model = model
        self.tokens_in = tokens_in
        self.redactions = redactions
        self.verifier = verifier
        self.shape = shape
        self.reserved = reserved
        self.capped = capped
        self.cap_budget = cap_budget
        self.request = request
        self.labels = task_labels(ctx.pools, pool_id, replica.replica_id)

    async def run(self, sr: StepRun) -> Done:
        """Hold a slot on the replica for the completion (the runner's deadline covers
        the wait)."""
        rep = self.replica
        queue_position = rep.waiting
        ahead = rep.waiting + (1 if rep.busy >= rep.slots else 0)
        predicted_ms = int(math.ceil(ahead / rep.slots) * rep.avg_step_ms) if ahead else 0
        clock = self.ctx.clock
        metrics = self.ctx.metrics
        metrics.tasks_enqueued.labels(**self.labels, priority=PRIORITY).inc()
        await rep.acquire()
        metrics.tasks_started.labels(**self.labels, priority=PRIORITY).inc()
        held_from = clock.monotonic()
        try:
            with tracing.engine_call(self.model, sr.provenance.engine, self.request,
                                     rep.replica_id) as call:
                try:
                    return await self._generate(sr, queue_position, predicted_ms)
                finally:
                    call.usage(sr.tokens_in, sr.tokens_out, sr.finish_reason)
        finally:
            rep.release((clock.monotonic() - held_from) * 1000.0)

    def _budget_reached(self) -> BudgetExceeded:
        return BudgetExceeded(f"output budget of {self.reserved} tokens reached "
                              f"({self.cap_budget})",
                              data={"budget": self.cap_budget, "limit": self.reserved})

    async def _generate(self, sr: StepRun, queue_position: int, predicted_ms: int) -> Done:
        ctx, rep = self.ctx, self.replica
        engine = rep.engine()
        sr.started(StartedData(type=self.step_type, queue_position=queue_position,
                               predicted_start_ms=predicted_ms, placement=self.decision,
                               redactions=self.redactions))
        sr.tokens_in = self.tokens_in
        clock = ctx.clock
        t0 = sr.decode_started = clock.monotonic()
        allowed, probing = rep.breaker.allow()
        sr.escalate(probing)
        if not allowed:
            raise CircuitOpen(f"replica {rep.replica_id}'s circuit breaker is open",
                              data={"replica_id": rep.replica_id})
        n = 0
        finish: str | None = None
        sampled: int | None = None
        text: list[str] = []
        texts = TokenText()
        verifier = self.verifier
        append = ctx.log.append
        step_id = sr.step_id
        verdict = False
        moved: Transition | None = None
        ctx.metrics.engine_requests.labels(pool_id=self.pool_id).inc()
        stream = engine.stream(self.request)
        try:
            async for item in stream:
                if isinstance(item, Finish):
                    finish, sampled = item.reason, item.tokens
                    break
                assert isinstance(item, Delta)
                if self.capped and n >= self.reserved:
                    # The engine ignored max_tokens: never log a token beyond the budget.
                    raise self._budget_reached()
                raw = item.data if item.data is not None else item.text.encode()
                tok = TokenData(i=n, t=texts.push(raw), id=item.token_id,
                                b=base64.b64encode(raw).decode("ascii"))
                if verifier is not None:
                    verifier.check(tok)
                append(step_id, tok)
                text.append(tok.t)
                n += 1
                sr.tokens_out = n
                if n == 1:
                    ctx.metrics.first_token_ms.labels(**latency_labels(self.labels)).observe(
                        (clock.monotonic() - sr.submitted_at) * 1000.0)
                if n % METRICS_EVERY == 0:
                    self._publish_metrics(sr, n, t0)
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
            sr.decode_ended = clock.monotonic()
            if not verdict:
                rep.breaker.release_probe()
            sr.escalate(moved)
        # Tokens the engine sampled: the frames plus any withheld as a stop string's.
        tokens_out = n if sampled is None else max(n, sampled)
        sr.tokens_out = tokens_out
        sr.finish_reason = finish
        if self.capped and finish == "length" and tokens_out >= self.reserved:
            # The engine was asked for at most the reservation: a `length` finish there is
            # the budget cutting the step, not the sampling limit (zero tokens over budget).
            raise self._budget_reached()
        if verifier is not None:
            verifier.finish(n)
        output, suggestions = self.shape.finish("".join(text), finish)
        for suggestion in suggestions:
            sr.append(suggestion)
        return Done(output)

    def _publish_metrics(self, sr: StepRun, n: int, t0: float) -> None:
        elapsed = self.ctx.clock.monotonic() - t0
        self.ctx.log.publish_ephemeral(sr.step_id, MetricsData(
            tokens_out=n, elapsed_ms=int(elapsed * 1000),
            tokens_per_s=round(n / elapsed, 1) if elapsed else 0.0,
            tokens_in=self.tokens_in,
            cost_usd=self.ctx.config.prices.cost_usd(self.model, self.tokens_in, n),
            reserved_tokens_out=self.reserved))


KINDS = (Llm,)
"""The Step types of this module (the registry finds them here)."""
