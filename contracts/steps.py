"""Step wire types: the submission union, sampling params and the Step resource (NERVE-4003)."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec

from contracts.errors import ErrorEnvelope
from contracts.events import Provenance
from contracts.limits import Id, Name, Seed, Token
from contracts.runs import Budgets, BudgetUsage, Placement

__all__ = [
    "CancelAccepted",
    "ChatMessage",
    "CheckpointInput",
    "CheckpointSubmit",
    "FsOp",
    "FsOpInput",
    "FsOpSubmit",
    "GateEvalInput",
    "GateEvalSubmit",
    "LlmCallInput",
    "LlmCallSubmit",
    "LlmPlanInput",
    "LlmPlanSubmit",
    "RenderedPrompt",
    "SamplingParams",
    "Step",
    "StepStatus",
    "StepSubmit",
    "StepType",
    "ToolCallInput",
    "ToolCallSubmit",
]


class StepType(enum.StrEnum):
    """The Step vocabulary (NERVE-4003)."""

    LLM_PLAN = "llm_plan"
    LLM_CALL = "llm_call"
    TOOL_CALL = "tool_call"
    FS_OP = "fs_op"
    GATE_EVAL = "gate_eval"
    CHECKPOINT = "checkpoint"


class StepStatus(enum.StrEnum):
    """Step lifecycle. ``queued → running → {succeeded, failed, cancelled, interrupted}``."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        """True for the four end states."""
        return self not in (StepStatus.QUEUED, StepStatus.RUNNING)


class SamplingParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every sampling parameter, always sent explicitly to the engine (DESIGN.md §5).

    ``temperature == 0`` is greedy decoding. ``max_tokens`` is a sampling limit, not a
    budget: reaching it ends the Step with finish_reason ``length``. ``seed`` overrides
    the seed derived from the Run seed and the client_token.
    """

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: Seed | None = None
    stop: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]],
                    msgspec.Meta(max_length=16)] = msgspec.field(default_factory=list)


class ChatMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One chat turn; the content is entirely user-authored and never rewritten."""

    role: Literal["system", "user", "assistant"]
    content: str


class _LlmInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Fields shared by ``llm_call`` and ``llm_plan``: exactly one of ``messages`` or
    ``prompt``.

    ``model`` is an opaque id exactly as ``GET /v1/capabilities`` advertises it.
    ``messages`` go through the model's own chat template; ``prompt`` is sent raw.
    """

    model: Id
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=1024)] | \
        None = None
    prompt: str | None = None
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)


class LlmCallInput(_LlmInput, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Input of an ``llm_call`` Step (NERVE-4003, NERVE-4013).

    ``response_contract``, when given, is a JSON Schema (2020-12) the output must
    satisfy: decoding is constrained to it where the engine supports that, the output is
    parsed and validated on the server, and the validated value is recorded as
    ``end.output.value``. A violation ends the Step with ``CONTRACT_VIOLATION``; there is
    no hidden retry. The contract is a determinism input (it is in ``params_hash``).
    """

    response_contract: dict[str, Any] | None = None


class LlmCallSubmit(msgspec.Struct, tag="llm_call", tag_field="type", forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for an ``llm_call``.

    ``client_token`` is the idempotency key within the Run.
    """

    client_token: Token
    input: LlmCallInput
    placement: Placement | None = None
    budgets: Budgets = msgspec.field(default_factory=Budgets)


class LlmPlanInput(_LlmInput, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Input of an ``llm_plan`` Step: a prompt and a tool menu (NERVE-4010, NERVE-4011).

    ``tools`` names tools the Flow declares (default: every declared tool), in menu
    order. The server shows the menu to the model as a system message (``menu``
    ``"system"``, the default) or leaves the prompt exactly as sent (``"none"``: the
    caller has described the tools itself). The model answers
    ``{"intents": [{"tool": <name>, "args": {...}}, ...]}`` with 1 to ``max_intents``
    intents, constrained to that shape where the engine supports it; each intent becomes
    one ``tool_suggest`` frame, marked valid only when its arguments validate against
    the tool's JSON Schema.

    ``fallback`` (NERVE-4094): when the engine cannot constrain decoding to the strict
    intents schema (a tool schema its grammar cannot express, or no constrained decoding
    at all), ``"refuse"`` (the default) refuses the Step with ``INVALID_PARAMS``;
    ``"allow"`` runs it under the looser constraint, named in the terminal frame's
    ``provenance.fallback``.
    """

    tools: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=64)] | None = None
    max_intents: Annotated[int, msgspec.Meta(ge=1, le=16)] = 4
    menu: Literal["system", "none"] = "system"
    fallback: Literal["refuse", "allow"] = "refuse"


class LlmPlanSubmit(msgspec.Struct, tag="llm_plan", tag_field="type",
                    forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for an ``llm_plan``."""

    client_token: Token
    input: LlmPlanInput
    placement: Placement | None = None
    budgets: Budgets = msgspec.field(default_factory=Budgets)


class ToolCallInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Input of a ``tool_call``: a tool the Flow declares, and its arguments.

    The arguments are validated against the tool's JSON Schema (2020-12) before anything
    runs; the tool's ``executor`` names an operator-configured executor.
    """

    tool: Name
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCallSubmit(msgspec.Struct, tag="tool_call", tag_field="type",
                     forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for a ``tool_call``."""

    client_token: Token
    input: ToolCallInput
    budgets: Budgets = msgspec.field(default_factory=Budgets)


FsOp = Literal["read", "write", "append", "list", "stat", "delete", "mkdir"]


class FsOpInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Input of an ``fs_op``: one operation inside the Run's sandbox (POLICY-3001).

    ``path`` is relative to ``fs_policy.roots[root]`` (or absolute inside it); ``content``
    is UTF-8 text for ``write`` and ``append``.
    """

    op: FsOp
    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    content: str | None = None
    root: Annotated[int, msgspec.Meta(ge=0, le=63)] = 0


class FsOpSubmit(msgspec.Struct, tag="fs_op", tag_field="type", forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for an ``fs_op``."""

    client_token: Token
    input: FsOpInput
    budgets: Budgets = msgspec.field(default_factory=Budgets)


class GateEvalInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Input of a ``gate_eval``: a JMESPath expression over the Run's Facts.

    The expression sees ``{"facts": [<Fact>...], "by_type": {<type>: [<data>...]}}``; the
    gate passes when the result is truthy (JMESPath truthiness). With ``wait_ms`` > 0 a
    failing gate waits for new Facts and re-evaluates, up to that many milliseconds. The
    expression's syntax tree may be at most 64 levels deep, and each evaluation has a
    work budget (NERVE-4007).
    """

    expression: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    wait_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 0


class GateEvalSubmit(msgspec.Struct, tag="gate_eval", tag_field="type",
                     forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for a ``gate_eval``."""

    client_token: Token
    input: GateEvalInput
    budgets: Budgets = msgspec.field(default_factory=Budgets)


class CheckpointInput(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Input of a ``checkpoint`` Step: the interpreter state to snapshot (JSON), at most
    ``max_recorded_value_bytes`` once encoded (POLICY-3030)."""

    snapshot: Any


class CheckpointSubmit(msgspec.Struct, tag="checkpoint", tag_field="type",
                       forbid_unknown_fields=True):
    """Body of ``POST /v1/runs/{run_id}/steps`` for a ``checkpoint``."""

    client_token: Token
    input: CheckpointInput
    budgets: Budgets = msgspec.field(default_factory=Budgets)


StepSubmit = (LlmCallSubmit | LlmPlanSubmit | ToolCallSubmit | FsOpSubmit | GateEvalSubmit
              | CheckpointSubmit)
"""The submission union, tagged on ``type``."""


class Step(msgspec.Struct):
    """A stored Step, as ``GET /v1/steps/{id}`` shows it.

    ``last_seq`` is the sequence number of the last durable frame in its log.
    ``attempt`` numbers the Steps of one ``client_token`` (0 first); a retry of an
    interrupted Step names the first attempt's step_id in ``retry_of`` (NERVE-4105).
    """

    step_id: str
    run_id: str
    type: StepType
    client_token: str
    input: Any
    input_hash: str
    placement: Placement | None
    status: StepStatus
    seed: int | None
    created_at: str
    usage: BudgetUsage
    last_seq: int
    provenance: Provenance | None = None
    error: ErrorEnvelope | None = None
    replay_of_step: str | None = None
    attempt: int = 0
    retry_of: str | None = None


class RenderedPrompt(msgspec.Struct, frozen=True):
    """``GET /v1/steps/{step_id}/prompt``: the exact text an LLM Step's engine was sent
    (NERVE-4092).

    Attributes:
        step_id: the Step.
        rendered: the text, exactly as sent: ``input.prompt`` itself, or what the chat
            template made of ``input.messages`` (with any system turn it adds), with the
            plan's menu and the policy's redactions.
        hash: ``b3:`` + hex blake3 of ``rendered``'s UTF-8 bytes; the terminal frame's
            ``provenance.rendered_hash`` when that is present.
        template: what rendered ``messages`` (``gguf``, ``server:<dialect>``, ``mock``);
            None for a ``prompt``.
    """

    step_id: str
    rendered: str
    hash: str
    template: str | None = None


class CancelAccepted(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The 202 answer of ``POST /v1/steps/{step_id}/cancel`` to a live Step (NERVE-4070).

    The cancel is requested, not done: the Step ends with a ``CANCELLED`` frame (or
    finishes first); ``GET /v1/steps/{step_id}`` shows its final status.
    """

    status: Literal["cancelling"] = "cancelling"
