"""The OpenAI facade's pure rules: request -> ``llm_call`` input, identity, output -> answer.

No HTTP here (the routes are :mod:`orchestratord.openai_facade`):

* :func:`refuse_unhonoured` refuses every parameter the engine cannot honour, by name
  (OAI-6002); :func:`chat_input` and :func:`completion_input` map the rest onto an
  ``llm_call`` input: messages, sampling params, ``response_format`` as
  ``response_contract``, ``tools`` as a constrained tool-call envelope (OAI-6003).
* :func:`call_key` is the hash of the canonical request and :class:`Occurrences` hands
  out its n-th occurrence in a Run, so the ``client_token`` of a call is the same in a
  recording and in its replays (OAI-6004).
* :func:`nearest_call` names the recorded call nearest to one the recording lacks and
  the first field that differs, in the request's own names (OAI-6004).
* :func:`tool_calls_of` turns a tool-call envelope into OpenAI ``tool_calls``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from contracts.canonical import canonical_json
from contracts.errors import InvalidParams
from contracts.flows import ToolSchema
from contracts.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    OaiMessage,
    OaiToolCall,
    OaiToolCallFunction,
)
from contracts.steps import ChatMessage, LlmCallInput, SamplingParams
from orchestrator_core.canonical import b3
from orchestrator_core.planning import intents_schema, menu_text
from orchestrator_core.replay import first_difference

__all__ = [
    "CALL_PREFIX",
    "Occurrences",
    "call_key",
    "chat_input",
    "completion_input",
    "nearest_call",
    "openai_field",
    "refuse_unhonoured",
    "tool_calls_of",
]

CALL_PREFIX = "oai:"
"""Every facade call's client_token starts with this (``oai:<call key>:<n>``)."""
_MAX_INTENTS = 4
_ANSWER = {"type": "object", "additionalProperties": False, "required": ["content"],
           "properties": {"content": {"type": "string"}}}
_PARAM_FIELDS = {"temperature", "top_p", "seed", "stop", "max_tokens"}

Request = ChatCompletionRequest | CompletionRequest


def _refuse(param: str, why: str) -> InvalidParams:
    return InvalidParams(f"{param}: {why}", data={"field": param})


def refuse_unhonoured(req: Request) -> None:
    """Refuse, by name, every parameter the engine cannot honour (OAI-6002).

    Raises:
        InvalidParams: ``data.field`` names the parameter (``n``, ``logit_bias``,
            ``presence_penalty``, ``frequency_penalty``, ``logprobs``, ``audio``, ...).
    """
    if req.n not in (None, 1):
        raise _refuse("n", "only one choice per call is supported (n=1)")
    if req.logit_bias:
        raise _refuse("logit_bias", "the engines do not take a logit bias")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0, 0.0):
            raise _refuse(name, "the engines do not take this penalty; only 0 is accepted")
    if isinstance(req, CompletionRequest):
        if req.logprobs is not None:
            raise _refuse("logprobs", "the engines do not report logprob values")
        if req.echo:
            raise _refuse("echo", "echo is not supported")
        if req.best_of not in (None, 1):
            raise _refuse("best_of", "only best_of=1 is supported")
        if req.suffix is not None:
            raise _refuse("suffix", "suffix (insertion) is not supported")
        return
    if req.logprobs or req.top_logprobs:
        raise _refuse("logprobs" if req.logprobs else "top_logprobs",
                      "the engines do not report logprob values")
    for name in ("audio", "prediction", "web_search_options", "reasoning_effort"):
        if getattr(req, name) is not None:
            raise _refuse(name, "not supported by the engines")
    if req.modalities not in (None, ["text"]):
        raise _refuse("modalities", 'only ["text"] is supported')
    if req.service_tier not in (None, "auto", "default"):
        raise _refuse("service_tier", "only auto or default")
    if req.max_tokens is not None and req.max_completion_tokens is not None \
            and req.max_tokens != req.max_completion_tokens:
        raise _refuse("max_completion_tokens", "differs from max_tokens; give one of them")


def call_key(req: Request) -> str:
    """``b3:<hex>`` of the canonical request (RFC 8785) without ``stream`` and
    ``stream_options``: a streamed and a plain call are the same call (OAI-6004)."""
    value = msgspec.to_builtins(req)
    value.pop("stream", None)
    value.pop("stream_options", None)
    return b3(value)


class Occurrences:
    """The n-th occurrence of each call key in each Run, handed out atomically.

    :meth:`claim` never awaits, so concurrent identical calls get distinct occurrences
    in the order they are claimed (OAI-6004). On first sight of a key in a Run it counts
    the tokens already stored (after a restart), then counts in memory; at most
    ``capacity`` keys are remembered (the oldest is forgotten and recounted when seen
    again).

    Args:
        capacity: keys remembered.
        prefix: what every client_token starts with (``oai:``; ``job:`` for the LLM
            jobs, NERVE-4082).
    """

    def __init__(self, capacity: int = 65_536, prefix: str = CALL_PREFIX) -> None:
        self.capacity = capacity
        self.prefix = prefix
        self._next: OrderedDict[tuple[str, str], int] = OrderedDict()

    def claim(self, run_id: str, key: str, stored: Callable[[str], bool]) -> str:
        """The client_token of the next occurrence of ``key`` in ``run_id``.

        Args:
            run_id: the Run.
            key: :func:`call_key` of the request.
            stored: whether a client_token already names a Step of the Run.

        Returns:
            ``<prefix><key hex>:<n>`` (``oai:<key hex>:<n>``), n from 0.
        """
        slot = (run_id, key)
        prefix = f"{self.prefix}{key.removeprefix('b3:')}:"
        n = self._next.pop(slot, None)
        if n is None:
            n = 0
            while stored(f"{prefix}{n}"):
                n += 1
        self._next[slot] = n + 1
        if len(self._next) > self.capacity:
            self._next.popitem(last=False)
        return f"{prefix}{n}"


def _params(req: Request, default_max: int | None) -> SamplingParams:
    base = SamplingParams()
    max_tokens = (getattr(req, "max_completion_tokens", None) or req.max_tokens
                  or default_max or base.max_tokens)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    return SamplingParams(
        temperature=base.temperature if req.temperature is None else req.temperature,
        top_p=base.top_p if req.top_p is None else req.top_p,
        max_tokens=max_tokens, seed=req.seed, stop=stop)


def _text(msg: OaiMessage, i: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    parts = []
    for j, part in enumerate(msg.content):
        if part.type != "text" or part.text is None:
            raise _refuse(f"messages[{i}].content[{j}].type",
                          "only text content parts are supported")
        parts.append(part.text)
    return "".join(parts)


def _calls_text(calls: Sequence[OaiToolCall], i: int) -> str:
    intents = []
    for j, call in enumerate(calls):
        try:
            args = msgspec.json.decode(call.function.arguments)
        except msgspec.DecodeError:
            raise _refuse(f"messages[{i}].tool_calls[{j}].function.arguments",
                          "tool call arguments must be JSON") from None
        intents.append({"tool": call.function.name, "args": args})
    return canonical_json({"intents": intents}).decode()


def _message(msg: OaiMessage, i: int) -> ChatMessage:
    text = _text(msg, i)
    match msg.role:
        case "system" | "developer":
            return ChatMessage(role="system", content=text)
        case "user":
            return ChatMessage(role="user", content=text)
        case "assistant":
            if msg.tool_calls:
                text = _calls_text(msg.tool_calls, i)
            return ChatMessage(role="assistant", content=text)
        case _:  # "tool": its result, as the next user turn
            return ChatMessage(role="user",
                               content=f"Tool result ({msg.tool_call_id or msg.name}): {text}")


def _tool_menu(req: ChatCompletionRequest) -> tuple[list[ToolSchema], bool] | None:
    """``(menu, may answer without a tool)`` or None when no tool call is possible."""
    if not req.tools or req.tool_choice == "none":
        return None
    menu = [ToolSchema(name=t.function.name, parameters=t.function.parameters,
                       description=t.function.description or "") for t in req.tools]
    if len({t.name for t in menu}) != len(menu):
        raise _refuse("tools", "two tools have the same name")
    choice = req.tool_choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        menu = [t for t in menu if t.name == name]
        if not menu:
            raise _refuse("tool_choice", f"names no tool of the request: {name!r}")
        return menu, False
    return menu, choice != "required"


def chat_input(req: ChatCompletionRequest) -> LlmCallInput:
    """The ``llm_call`` input of a chat request (OAI-6001, OAI-6003).

    ``messages`` map one to one (``developer`` is ``system``; an assistant's tool calls
    become its JSON tool-call envelope; a ``tool`` result becomes a user turn). With
    ``tools`` a system message showing the menu goes first and the output is constrained
    to ``{"intents": [{"tool", "args"}]}`` (or ``{"content"}`` when the model may answer
    without a tool); with ``response_format`` the schema is the ``response_contract``.

    Raises:
        InvalidParams: a refused parameter, non-text content, tool-call arguments that
            are not JSON, ``data.field`` naming it.
    """
    refuse_unhonoured(req)
    messages = [_message(m, i) for i, m in enumerate(req.messages)]
    contract: dict[str, Any] | None = None
    menu = _tool_menu(req)
    fmt = req.response_format
    if menu is not None:
        if fmt is not None and fmt.type != "text":
            raise _refuse("response_format", "cannot be combined with tools")
        tools, may_answer = menu
        most = 1 if req.parallel_tool_calls is False else _MAX_INTENTS
        envelope = intents_schema(tools, most)
        text = menu_text(tools, most)
        if may_answer:
            envelope = {"anyOf": [envelope, _ANSWER]}
            text += '\nTo answer without a tool, reply {"content": "<your answer>"} instead.'
        messages.insert(0, ChatMessage(role="system", content=text))
        contract = envelope
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or fmt.json_schema.schema is None:
            raise _refuse("response_format.json_schema.schema", "a schema is required")
        contract = fmt.json_schema.schema
    elif fmt is not None and fmt.type == "json_object":
        contract = {"type": "object"}
    return LlmCallInput(model=req.model, messages=messages, params=_params(req, None),
                        response_contract=contract)


def completion_input(req: CompletionRequest) -> LlmCallInput:
    """The ``llm_call`` input of a text completion: the raw prompt; ``max_tokens``
    defaults to 16 as OpenAI's does (OAI-6001).

    Raises:
        InvalidParams: a refused parameter, ``data.field`` naming it.
    """
    refuse_unhonoured(req)
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    return LlmCallInput(model=req.model, prompt=prompt, params=_params(req, 16))


def openai_field(path: str, req: Request) -> str:
    """A dotted path into the ``llm_call`` input, in the request's own names.

    ``params.max_tokens`` is ``max_tokens`` (or ``max_completion_tokens`` when the
    request used it), ``response_contract`` is ``response_format.json_schema.schema`` (or
    ``tools``), and ``messages[k]`` shifts past the tool menu (``messages[0]`` is then
    ``tools``).
    """
    path = path.removeprefix(".")
    tools = isinstance(req, ChatCompletionRequest) and _tool_menu(req) is not None
    head, _, rest = path.partition(".")
    if head == "params":
        name = rest.split("[", 1)[0].split(".", 1)[0]
        if name == "max_tokens" and getattr(req, "max_completion_tokens", None) is not None:
            return "max_completion_tokens"
        return rest if name in _PARAM_FIELDS else "params"
    if head.startswith("response_contract"):
        return "tools" if tools else "response_format.json_schema.schema"
    if tools and path.startswith("messages["):
        index, _, tail = path[len("messages["):].partition("]")
        if index.isdigit():
            k = int(index)
            return "tools" if k == 0 else f"messages[{k - 1}]{tail}"
    return path


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, canonical_json(value)


def nearest_call(recorded: Sequence[tuple[str, Any]], submitted: Any) -> tuple[str, str] | None:
    """The recorded call nearest to ``submitted`` and the first field that differs.

    Nearness is the number of equal leaf values (a tie goes to the earlier call).

    Args:
        recorded: ``(step_id, llm_call input as builtins)`` of the recording's facade
            calls, in creation order.
        submitted: the submitted ``llm_call`` input as builtins.

    Returns:
        ``(step_id, dotted path of the first difference)``, or None when nothing is
        recorded (or the nearest call is equal, which admission would have matched).
    """
    mine = set(_leaves(submitted))
    best: tuple[int, str, Any] | None = None
    for step_id, value in recorded:
        score = len(mine.intersection(_leaves(value)))
        if best is None or score > best[0]:
            best = (score, step_id, value)
    if best is None:
        return None
    field = first_difference(best[2], submitted, path="")
    return None if field is None else (best[1], field)


def tool_calls_of(value: Any, call_id: str) -> tuple[list[OaiToolCall], str | None]:
    """``(tool_calls, content)`` of a tool-call envelope: its intents as OpenAI tool
    calls with ids ``<call_id>_<i>``, or the content the model answered instead."""
    if isinstance(value, dict) and "intents" in value:
        calls = [OaiToolCall(id=f"{call_id}_{i}", function=OaiToolCallFunction(
            name=it["tool"], arguments=canonical_json(it["args"]).decode()))
            for i, it in enumerate(value["intents"])]
        return calls, None
    content = value.get("content") if isinstance(value, dict) else None
    return [], content if isinstance(content, str) else None
