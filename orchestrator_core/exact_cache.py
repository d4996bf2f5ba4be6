"""The exact-match cache: a ``record`` LLM Step served from an earlier one (REC-7100 ..
REC-7106).

A Run created with ``cache: "exact"`` serves an ``llm_call`` or ``llm_plan`` Step from
an earlier succeeded Step of the same tenant when both have the same cache key, with no
engine request: the Step is stored finished, by reference to the earlier Step's frames
(NERVE-4025), and its provenance names that Step in ``cached_from``.

The key is ``b3`` of the tenant, the Step type and input hash, and every determinism
input the engine's output depends on: the per-Step seed, the hashes of the prompt as the
engine is shown it (after redaction and a plan's menu) and of the sampling parameters
with the decoding constraint, the Run's ``policy_hash``, the engine's name, version,
build fingerprint and model hash, and the price table version (a served Step's usage is
the source's, costed with that table). The text the chat template renders is a function
of these (the template is in the model file or in the build's settings), so it is not
keyed apart, and the key is known before the engine is asked anything. The replica is
not keyed: replicas of one pool share the identity.

Budgets count a served Step as if it had run (REC-7105), so whether a Step hits never
changes what a Run may do next; a Step the Run's budgets would cut is not served.
"""

from __future__ import annotations

from contracts.runs import Run
from orchestrator_core.canonical import b3
from orchestrator_core.rows import StepRow
from orchestrator_core.steps.base import Admission, Done, Plan, StepContext, StepRun
from worker_adapters.base import EngineIdentity

__all__ = ["cache_key", "cached_plan"]

KEY_VERSION = 1
"""Folded into every key, so a change of what is keyed never matches an older key."""


def cache_key(*, tenant: str, step_type: str, input_hash: str, seed: int, prompt_hash: str,
              params_hash: str, policy_hash: str, identity: EngineIdentity,
              price_table_version: str) -> str:
    """The exact-match cache key of a ``record`` LLM Step (REC-7101).

    Args:
        tenant: the Run's tenant; two tenants never share a key.
        step_type: ``llm_call`` or ``llm_plan``.
        input_hash: the Step's ``b3`` of ``{type, input}`` (NERVE-4003).
        seed: the per-Step seed (``params.seed``, else derived from the Run seed and
            the client_token, NERVE-4012).
        prompt_hash: ``b3`` of the prompt or messages as sent, the provenance's.
        params_hash: ``b3`` of the sampling parameters without the seed, with the
            decoding constraint, the provenance's.
        policy_hash: the Run's.
        identity: the placed pool's engine identity.
        price_table_version: the server's price table version.

    Returns:
        ``b3:<64 hex>``.
    """
    return b3({"v": KEY_VERSION, "tenant": tenant, "type": step_type,
               "input_hash": input_hash, "seed": seed, "prompt_hash": prompt_hash,
               "params_hash": params_hash, "policy_hash": policy_hash,
               "engine": identity.name, "engine_version": identity.version,
               "engine_build": identity.build_fingerprint,
               "model_hash": identity.model_hash,
               "price_table_version": price_table_version})


def cached_plan(ctx: StepContext, adm: Admission, key: str, *, model: str, max_tokens: int,
                context_tokens: int) -> Plan | None:
    """The plan that serves ``adm`` from the cache, or None to run it on the engine
    (REC-7102, REC-7105).

    Nothing is looked up unless the Run has ``cache: "exact"``. A source is served when
    its prompt still fits the model's context with ``max_tokens``, and the budgets admit
    the Step with the source's prompt tokens and leave it at least the source's output
    tokens (a Step the budget would cut runs, and is cut, on the engine). The
    reservation made for it is released once the served Step is stored.

    Args:
        ctx: the step context (store, budgets, clock).
        adm: the admission; ``adm.run`` is in ``adm.tenant``.
        key: the Step's cache key.
        model: the model id (prices).
        max_tokens: the Step's sampling limit.
        context_tokens: the model's context size (tokens).

    Raises:
        BudgetExceeded: the Run's or Step's budgets refuse the Step, as they would
            refuse it on the engine (same prompt tokens); nothing is stored.
    """
    run: Run = adm.run
    if run.cache != "exact":
        return None
    source: StepRow | None = ctx.store.cached_step(adm.tenant, key)
    if source is None or source.tokens_in + max_tokens > context_tokens:
        return None
    res = ctx.budgets.admit(run, adm.step_id, adm.body.budgets, model=model,
                            tokens_in=source.tokens_in, max_tokens=max_tokens,
                            now_s=ctx.clock.now())
    if res.capped and source.tokens_out >= res.tokens_out:
        ctx.budgets.release(run.run_id, adm.step_id)
        return None
    return Plan(execute=_never, llm=True, model=model, seed=source.seed, reservation=res,
                cached=source)


async def _never(_sr: StepRun) -> Done:
    raise AssertionError("a Step served from the cache has no task")
