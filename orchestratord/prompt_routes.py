"""The rendered prompt of an LLM Step: ``GET /v1/steps/{step_id}/prompt`` (NERVE-4092).

It answers the exact text the Step's engine was sent (a ``prompt`` itself, or what the
model's chat template made of ``messages``, with any system turn the template adds),
its ``b3:`` hash and the template that rendered it (specs/80_plans_and_contracts.md §6).
"""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from contracts.steps import RenderedPrompt
from orchestrator_core.prompts import step_prompt
from orchestrator_core.service import Orchestrator

__all__ = ["PROMPT_ROUTES", "get_step_prompt"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]


@get("/v1/steps/{step_id:str}/prompt")
async def get_step_prompt(step_id: FromPath[str], orch: Orch, tenant: Tenant) -> RenderedPrompt:
    """The text an LLM Step's engine was sent, byte for byte, with its hash (NERVE-4092).

    Raises:
        NotFound: no such Step, another tenant's, a Step of another type, or one whose
            text was not recorded.
    """
    return step_prompt(orch.store, step_id, tenant)


PROMPT_ROUTES = [get_step_prompt]
"""The route handlers the app registers."""
