"""Adapter for OpenAI-compatible ``/v1/completions`` streaming servers (remote pools).

It drives llama-server, vLLM or Ollama's OpenAI endpoint on another host (the local
default engine is the llama.cpp worker, :mod:`worker_adapters.llamacpp_engine`). Every
sampling parameter and the seed are sent explicitly (DESIGN.md §5). The pool's
``dialect`` adds what that server needs for exact replay (PLACE-5003, PLACE-5005):

* ``llama-server``: ``cache_prompt: false``, so each prompt is evaluated from an empty
  prefix cache within the request itself (no extra request per step);
* ``vllm``: ``logprobs: 0`` with ``return_tokens_as_token_ids: true``, so each chunk names
  the engine's token ids; their bytes come from the model's own vocabulary;
* ``openai``: nothing more; token ids are recovered from the streamed text (-1 when a
  chunk is not exactly one vocabulary piece).

The engine's HTTP transport is injectable (``httpx.MockTransport`` in tests).
"""

from __future__ import annotations

import atexit
import functools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol

import httpx
import msgspec

from contracts.errors import EngineError, InvalidParams
from worker_adapters.base import (
    CompletionRequest,
    Delta,
    EngineAdapter,
    EngineIdentity,
    Finish,
    PreparedPrompt,
    StreamItem,
)

__all__ = ["Chunk", "Constraint", "Dialect", "OpenAIHttpEngine", "Tokenizer",
           "completion_body", "constraint_fields"]

Constraint = Literal["gbnf", "json_schema", "guided_json"]
"""How an OpenAI-compatible engine takes a JSON Schema constraint: a GBNF ``grammar``
(llama-cpp-python), a ``json_schema`` field (llama-server) or ``guided_json`` (vLLM)."""

Dialect = Literal["openai", "llama-server", "vllm"]
"""Which OpenAI-compatible server a pool talks to (see the module docstring)."""


class Tokenizer(Protocol):
    """The model's own tokenizer and chat template, used without an engine request."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the model's chat template with a generation prompt."""
        ...

    def count(self, text: str) -> int:
        """Tokens the engine will see for ``text`` (BOS included where the model adds it)."""
        ...

    def token_id(self, piece: str) -> int:
        """Vocabulary id of one streamed token piece (-1 when unknown)."""
        ...

    def piece(self, token_id: int) -> bytes:
        """The exact bytes of one vocabulary token."""
        ...


class _Logprobs(msgspec.Struct):
    tokens: list[str] = []


class _Choice(msgspec.Struct):
    text: str = ""
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class Chunk(msgspec.Struct):
    """One streamed ``text_completion`` chunk (only the fields the adapter reads)."""

    choices: list[_Choice]


_chunk_decoder = msgspec.json.Decoder(Chunk)

@functools.cache
def _grammar_compiler() -> Any:
    """llama-cpp-python's JSON-Schema-to-GBNF converter, imported once.

    Importing ``llama_cpp`` opens two ``/dev/null`` handles it never closes; they are
    closed at interpreter exit so that no ``ResourceWarning`` is left behind.
    """
    from llama_cpp import _utils
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    def close_null_files() -> None:
        for name in ("outnull_file", "errnull_file"):
            handle = getattr(_utils, name, None)
            if handle is not None:
                handle.close()

    atexit.register(close_null_files)
    return json_schema_to_gbnf


@functools.lru_cache(maxsize=256)
def _gbnf(schema_json: str) -> str:
    return str(_grammar_compiler()(schema_json))


MAX_GRAMMAR_BOUND = 1000
"""The largest length/count bound a schema may set for grammar compilation: the GBNF
converter unrolls ``maxLength``/``minItems``... into that many grammar terms."""

_BOUNDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties",
           "maxProperties", "minContains", "maxContains")


def _check_bounds(node: Any, path: str = "$") -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _BOUNDS and isinstance(value, int) and value > MAX_GRAMMAR_BOUND:
                raise InvalidParams(
                    f"{key} {value} at {path} is too large to constrain decoding "
                    f"(at most {MAX_GRAMMAR_BOUND})",
                    data={"path": path, "keyword": key, "limit": MAX_GRAMMAR_BOUND})
            _check_bounds(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_bounds(item, f"{path}[{i}]")


def constraint_fields(constraint: Constraint | None, schema: dict[str, Any] | None) -> \
        dict[str, Any]:
    """The extra ``/v1/completions`` body fields that constrain decoding to ``schema``.

    The GBNF grammar is compiled once per distinct schema (canonical JSON as the key).

    Raises:
        InvalidParams: the schema uses a construct the grammar compiler cannot express,
            or a length/count bound above :data:`MAX_GRAMMAR_BOUND`.
    """
    if schema is None or constraint is None:
        return {}
    if constraint == "gbnf":
        _check_bounds(schema)
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        try:
            return {"grammar": _gbnf(key)}
        except (AssertionError, ValueError, KeyError, TypeError, NotImplementedError,
                RecursionError) as exc:  # the converter reports unsupported input by assert
            raise InvalidParams(f"the engine cannot constrain decoding to this schema: {exc}",
                                data={"constraint": constraint}) from exc
    return {constraint: schema}


def completion_body(request: CompletionRequest, constraint: Constraint | None = None,
                    dialect: Dialect = "openai") -> dict[str, object]:
    """The ``POST /v1/completions`` body: streaming, every sampling parameter explicit.

    Parameters the request does not carry are pinned to their neutral values
    (``typical_p`` 1, no presence/frequency penalty, no mirostat), so an engine's own
    defaults never leak into the output (DESIGN.md §5, PLACE-5003). The ``dialect`` adds
    its fields (module docstring).
    """
    extra: dict[str, object] = {}
    if dialect == "llama-server":
        extra = {"cache_prompt": False}
    elif dialect == "vllm":
        extra = {"logprobs": 0, "return_tokens_as_token_ids": True}
    return {
        "prompt": request.prompt,
        "stream": True,
        "seed": request.seed,
        "temperature": request.temperature,
        "top_k": request.top_k,
        "top_p": request.top_p,
        "min_p": request.min_p,
        "typical_p": 1.0,
        "repeat_penalty": request.repeat_penalty,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "mirostat_mode": 0,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        **constraint_fields(constraint, request.json_schema),
        **extra,
    }


class OpenAIHttpEngine(EngineAdapter):
    """Streams ``/v1/completions`` from one replica at ``base_url``.

    Args:
        base_url: e.g. ``http://127.0.0.1:18001``.
        identity: the replica's determinism identity.
        tokenizer: the model's tokenizer, for token counts and token ids.
        transport: optional httpx transport (tests).
        connect_timeout_s: seconds to establish a connection.
        constraint: how the engine takes ``CompletionRequest.json_schema``
            (see :data:`Constraint`); ``None`` sends no constraint.
        dialect: the server's kind (see :data:`Dialect`).
    """

    def __init__(
        self,
        base_url: str,
        identity: EngineIdentity,
        tokenizer: Tokenizer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout_s: float = 5.0,
        constraint: Constraint | None = None,
        dialect: Dialect = "openai",
    ) -> None:
        super().__init__(identity)
        self.constrained_decoding = constraint
        self.base_url = base_url
        self.tokenizer = tokenizer
        self.dialect: Dialect = dialect
        self.constraint: Constraint | None = constraint
        self._client = httpx.AsyncClient(
            base_url=base_url,
            transport=transport,
            timeout=httpx.Timeout(None, connect=connect_timeout_s),
        )

    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render with the chat template (or take ``prompt`` raw) and count its tokens."""
        text = prompt if prompt is not None else self.tokenizer.render(messages or [])
        return PreparedPrompt(text=text, tokens_in=self.tokenizer.count(text))

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """POST a streaming completion; yield one Delta per engine chunk, then Finish.

        If the engine's stream ends with no ``finish_reason`` (e.g. it was interrupted
        by another request), nothing more is yielded: the caller sees no Finish.

        Raises:
            EngineError: connection failure, non-200 status or an undecodable chunk.
        """
        body = completion_body(request, self.constraint, self.dialect)
        self.requests += 1
        try:
            async with self._client.stream("POST", "/v1/completions", json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:500].decode("utf-8", "replace")
                    raise EngineError(
                        f"engine answered HTTP {resp.status_code}",
                        data={"status": resp.status_code, "detail": detail,
                              "url": self.base_url},
                    )
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    payload = line[6:]
                    if payload == "[DONE]":
                        return
                    chunk = _chunk_decoder.decode(payload)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    for delta in self._deltas(choice):
                        self.tokens_generated += 1
                        yield delta
                    if choice.finish_reason:
                        yield Finish(reason=choice.finish_reason)
                        return
        except httpx.HTTPError as exc:
            raise EngineError(f"engine request failed: {type(exc).__name__}: {exc}",
                              data={"url": self.base_url}) from exc
        except (msgspec.DecodeError, ValueError) as exc:
            raise EngineError(f"engine sent an undecodable chunk: {exc}",
                              data={"url": self.base_url}) from exc

    def check_constraint(self, schema: dict[str, Any]) -> None:
        """Compile the schema's constraint now (cached), so a schema the engine cannot
        express is refused at submission (INVALID_PARAMS) rather than mid-stream."""
        constraint_fields(self.constraint, schema)

    def _deltas(self, choice: _Choice) -> list[Delta]:
        """The tokens of one chunk: engine ids with their vocabulary bytes (``vllm``), or
        the chunk's text as one token whose id is looked up (-1 when unknown)."""
        if self.dialect == "vllm" and choice.logprobs is not None and choice.logprobs.tokens:
            out = []
            for name in choice.logprobs.tokens:
                tid = int(name.removeprefix("token_id:"))
                out.append(Delta(text="", token_id=tid, data=self.tokenizer.piece(tid)))
            return out
        if not choice.text:
            return []
        return [Delta(text=choice.text, token_id=self.tokenizer.token_id(choice.text))]

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
