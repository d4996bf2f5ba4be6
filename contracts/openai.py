"""Wire types of the OpenAI-compatible facade (OAI-6000..OAI-6007).

The facade lives under ``/v1/runs/{run_id}/openai/v1``: the requests are the subset of
OpenAI's Chat Completions and Completions bodies the server honours (every other field
is refused by name, never ignored), the responses and stream chunks are what the
official ``openai`` SDK parses, and errors have OpenAI's shape
``{"error": {"message", "type", "code", "param"}}`` (OAI-6005).

Numbers are bounded here so that hostile values are a typed 400 before anything else
runs (OAI-6006).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from contracts.limits import Id, Name, Seed

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChunkChoice",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "OaiContentPart",
    "OaiError",
    "OaiErrorBody",
    "OaiFunction",
    "OaiJsonSchema",
    "OaiMessage",
    "OaiModel",
    "OaiModelList",
    "OaiResponseFormat",
    "OaiStreamOptions",
    "OaiTool",
    "OaiToolCall",
    "OaiToolCallFunction",
    "OaiUsage",
    "ResponseMessage",
]

_Text = Annotated[str, msgspec.Meta(max_length=1_000_000)]
_Stop = Annotated[str, msgspec.Meta(max_length=64)]
_Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
_TopP = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
_MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
_Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]


class OaiContentPart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One part of a message's content; only ``text`` parts are honoured."""

    type: Annotated[str, msgspec.Meta(max_length=64)]
    text: _Text | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None


class OaiToolCallFunction(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The function of a tool call: its name and its arguments as JSON text."""

    name: Name
    arguments: _Text


class OaiToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool call, in an assistant message or a response."""

    id: Annotated[str, msgspec.Meta(max_length=256)]
    function: OaiToolCallFunction
    type: Literal["function"] = "function"


class OaiMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A chat message as the SDK sends it (``developer`` counts as ``system``)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: _Text | Annotated[list[OaiContentPart], msgspec.Meta(max_length=256)] | None = None
    name: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    tool_calls: Annotated[list[OaiToolCall], msgspec.Meta(max_length=64)] | None = None
    tool_call_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    refusal: _Text | None = None


class OaiFunction(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A function tool: name, description and JSON Schema of its arguments."""

    name: Name
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    strict: bool | None = None


class OaiTool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool of a request; only ``function`` tools exist."""

    function: OaiFunction
    type: Literal["function"] = "function"


class OaiJsonSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``response_format.json_schema``: the schema becomes the Step's response_contract."""

    name: Annotated[str, msgspec.Meta(max_length=128)]
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


class OaiResponseFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                        omit_defaults=True):
    """``response_format``: ``text``, ``json_schema`` or ``json_object``."""

    type: Literal["text", "json_schema", "json_object"]
    json_schema: OaiJsonSchema | None = None


class OaiStreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                       omit_defaults=True):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Sampling(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                kw_only=True):
    """Fields shared by both request kinds. Those the engine cannot honour are accepted
    only at their neutral value (OAI-6002)."""

    model: Id
    temperature: _Temperature | None = None
    top_p: _TopP | None = None
    max_tokens: _MaxTokens | None = None
    seed: Seed | None = None
    stop: _Stop | Annotated[list[_Stop], msgspec.Meta(max_length=16)] | None = None
    stream: bool | None = None
    stream_options: OaiStreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    logit_bias: Annotated[dict[str, float], msgspec.Meta(max_length=1024)] | None = None
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class ChatCompletionRequest(_Sampling, frozen=True, forbid_unknown_fields=True,
                            omit_defaults=True, kw_only=True):
    """Body of ``POST .../openai/v1/chat/completions`` (OAI-6001, OAI-6002)."""

    messages: Annotated[list[OaiMessage], msgspec.Meta(min_length=1, max_length=1024)]
    max_completion_tokens: _MaxTokens | None = None
    response_format: OaiResponseFormat | None = None
    tools: Annotated[list[OaiTool], msgspec.Meta(min_length=1, max_length=64)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    audio: Any = None
    modalities: Annotated[list[Annotated[str, msgspec.Meta(max_length=32)]],
                          msgspec.Meta(max_length=4)] | None = None
    prediction: Any = None
    reasoning_effort: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    web_search_options: Any = None
    metadata: Any = None
    store: bool | None = None
    service_tier: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class CompletionRequest(_Sampling, frozen=True, forbid_unknown_fields=True, omit_defaults=True,
                        kw_only=True):
    """Body of ``POST .../openai/v1/completions`` (OAI-6001, OAI-6002)."""

    prompt: _Text | Annotated[list[_Text], msgspec.Meta(min_length=1, max_length=1)]
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=5)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, msgspec.Meta(ge=1, le=20)] | None = None
    suffix: _Text | None = None


class OaiUsage(msgspec.Struct, frozen=True):
    """Token usage of a call (the Step's ``tokens_in`` and ``tokens_out``)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """The assistant's message in a chat completion."""

    role: Literal["assistant"]
    content: str | None
    tool_calls: list[OaiToolCall] | None = None


class ChatChoice(msgspec.Struct, frozen=True):
    """The one choice of a chat completion."""

    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(msgspec.Struct, frozen=True):
    """A chat completion. ``id`` and ``created`` are those of the recorded call, so a
    replay answers byte for byte what the recording answered (OAI-6004)."""

    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: OaiUsage
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class ChatDelta(msgspec.Struct, frozen=True, omit_defaults=True):
    """The delta of a stream chunk."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(msgspec.Struct, frozen=True):
    """The one choice of a stream chunk."""

    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, frozen=True):
    """One ``data:`` chunk of a streamed chat completion; the usage chunk (with
    ``stream_options.include_usage``) has no choices."""

    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: OaiUsage | None = None
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    system_fingerprint: str | None = None


class CompletionChoice(msgspec.Struct, frozen=True):
    """The one choice of a text completion (or of one of its stream chunks)."""

    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(msgspec.Struct, frozen=True):
    """A text completion, or one chunk of a streamed one (same shape, as OpenAI's)."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: OaiUsage | None = None
    object: Literal["text_completion"] = "text_completion"
    system_fingerprint: str | None = None


class OaiModel(msgspec.Struct, frozen=True):
    """A served model id, as ``GET .../openai/v1/models`` lists it."""

    id: str
    created: int
    owned_by: str
    object: Literal["model"] = "model"


class OaiModelList(msgspec.Struct, frozen=True):
    """``GET .../openai/v1/models``: every model of every pool."""

    data: list[OaiModel]
    object: Literal["list"] = "list"


class OaiError(msgspec.Struct, frozen=True):
    """The inside of an OpenAI error body: ``code`` is the server's ErrorCode, ``param``
    the offending request field (or None)."""

    message: str
    type: str
    code: str
    param: str | None = None


class OaiErrorBody(msgspec.Struct, frozen=True):
    """Every error of the facade: ``{"error": {...}}`` (OAI-6005)."""

    error: OaiError
