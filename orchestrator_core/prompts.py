"""No hidden prompts: the exact text an LLM Step's engine was sent, kept and shown
(NERVE-4090, NERVE-4091, NERVE-4092, NERVE-4093).

A ``prompt`` goes to the engine byte for byte. Whenever the text sent is anything else
(``messages`` through the model's chat template, which may add a system turn of its own;
a plan's tool menu; a redaction of the Run's policy), admission keeps that text,
content-addressed by :func:`text_hash`, and puts the hash in the Step's provenance
(``rendered_hash``, with ``template`` for ``messages``: :func:`rendered_of`), so
``strict_replay`` sees a changed template and ``GET /v1/steps/{id}/prompt`` shows the
text (:func:`step_prompt`).
"""

from __future__ import annotations

import blake3
import msgspec

from contracts.errors import InvalidParams, NotFound
from contracts.events import Provenance
from contracts.steps import RenderedPrompt
from orchestrator_core.store_base import Store
from worker_adapters.base import PreparedPrompt

__all__ = ["rendered_of", "step_prompt", "text_hash"]

_prov = msgspec.json.Decoder(Provenance)
_LLM_TYPES = ("llm_call", "llm_plan")


def text_hash(text: str) -> str:
    """``b3:`` + hex blake3 of ``text``'s UTF-8 bytes (NERVE-4091)."""
    return "b3:" + blake3.blake3(text.encode("utf-8")).hexdigest()


def rendered_of(prepared: PreparedPrompt, prompt: str | None, *,
                limit_bytes: int) -> tuple[str | None, str | None]:
    """The provenance of the text an engine is about to be sent, unless it is the Step's
    own ``input.prompt`` byte for byte (NERVE-4091). Pure: admission keeps the text with
    ``Store.record_prompt_text`` once every check has passed.

    Args:
        prepared: what the engine adapter rendered (its text is sent as is).
        prompt: the Step's ``input.prompt`` as submitted, or None for ``messages``.
        limit_bytes: ``max_recorded_value_bytes``; a longer text is refused.

    Returns:
        ``(rendered_hash, template)`` for the provenance block; ``(None, None)`` when
        the engine is sent ``prompt`` itself.

    Raises:
        InvalidParams: the text is over ``limit_bytes`` of UTF-8 (``data.field``
            ``input.messages`` or ``input.prompt``, ``reason`` ``size``, ``limit_bytes``;
            POLICY-3030).
    """
    if prompt is not None and prepared.text == prompt:
        return None, None
    size = len(prepared.text.encode("utf-8"))
    if size > limit_bytes:
        field = "input.prompt" if prompt is not None else "input.messages"
        raise InvalidParams(
            f"the rendered prompt ({size} bytes) is over the server's bound on recorded "
            f"values ({limit_bytes} bytes)",
            data={"field": field, "reason": "size", "limit_bytes": limit_bytes})
    return text_hash(prepared.text), prepared.template


def step_prompt(store: Store, step_id: str, tenant: str | None) -> RenderedPrompt:
    """The exact text the engine of the tenant's LLM Step was sent (NERVE-4092).

    Args:
        store: the store.
        step_id: the Step.
        tenant: the caller's tenant; another tenant's Step answers like an unknown one.

    Returns:
        The text kept under the provenance's ``rendered_hash``, or, when there is none,
        the Step's ``input.prompt`` (what the engine was sent, byte for byte).

    Raises:
        NotFound: no such Step, another tenant's, a Step that is not ``llm_call`` or
            ``llm_plan`` (``data.type``), or one whose text this server did not keep
            (admitted before schema v13: ``data.reason`` ``not_recorded``).
    """
    row = store.get_step(step_id)
    if row is not None and tenant is not None:
        run = store.get_run(row.run_id)
        if run is None or run.tenant != tenant:
            row = None
    if row is None:
        raise NotFound(f"no step {step_id}", data={"step_id": step_id})
    if row.type not in _LLM_TYPES:
        raise NotFound(f"step {step_id} is a {row.type} step: only llm_call and llm_plan "
                       "steps send a prompt", data={"step_id": step_id, "type": row.type})
    prov = _prov.decode(row.provenance) if row.provenance else None
    inp = msgspec.json.decode(row.input)
    prompt = inp.get("prompt") if isinstance(inp, dict) else None
    text: str | None = None
    if prov is not None and prov.rendered_hash is not None:
        text = store.prompt_text(prov.rendered_hash)
    elif isinstance(prompt, str) and not (row.type == "llm_plan"
                                          and inp.get("menu", "system") == "system"):
        text = prompt  # no rendered_hash: the engine was sent input.prompt itself
    if prov is None or text is None:
        raise NotFound(f"the prompt text of step {step_id} was not recorded",
                       data={"step_id": step_id, "reason": "not_recorded"})
    return RenderedPrompt(step_id=step_id, rendered=text, hash=text_hash(text),
                          template=prov.template)
