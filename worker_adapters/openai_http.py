"""Adapter for OpenAI-compatible ``/v1/completions`` streaming servers (remote pools).

It drives llama-server, vLLM, llama-cpp-python's server or Ollama's OpenAI endpoint on
another host (the local default engine is the llama.cpp worker,
:mod:`worker_adapters.llamacpp_engine`). Every sampling parameter and the seed are sent
explicitly (DESIGN.md §5). The pool's ``dialect`` adds what that server needs for exact
replay and token ids (PLACE-5003, PLACE-5005, PLACE-5007):

* ``llama-server``: ``cache_prompt: false``, so each prompt is evaluated from an empty
  prefix cache within the request itself (no extra request per step), ``mirostat: 0`` and
  ``repeat_last_n: 64`` (its own names), and ``n_probs: 1``, so each chunk names the
  sampled token's id and exact bytes;
* ``vllm``: ``logprobs: 0`` with ``return_tokens_as_token_ids: true``, so each chunk names
  the engine's token ids;
* ``llama-cpp-python`` and ``openai``: nothing more; the chunks carry text only.

With the model file on this machine (the pool model's ``path``), prompts are rendered and
counted with its :class:`Tokenizer`, and token bytes and text-only ids come from its
vocabulary. Without it, the engine server renders, counts and tokenizes
(:mod:`worker_adapters.remote_tokenizer`): :meth:`OpenAIHttpEngine.aprepare` must then be
used, and a token's bytes are the server's (see :meth:`OpenAIHttpEngine.stream`).

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
from worker_adapters.remote_tokenizer import Piece, RemoteTokenizer, remote_tokenizer

__all__ = ["Chunk", "Constraint", "Dialect", "OpenAIHttpEngine", "Tokenizer",
           "completion_body", "constraint_fields"]

Constraint = Literal["gbnf", "json_schema", "guided_json"]
"""How an OpenAI-compatible engine takes a JSON Schema constraint: a GBNF ``grammar``
(llama-cpp-python), a ``json_schema`` field (llama-server) or ``guided_json`` (vLLM)."""

Dialect = Literal["openai", "llama-server", "vllm", "llama-cpp-python"]
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


class _Prob(msgspec.Struct):
    """llama-server's probability entry of one sampled token (``n_probs``)."""

    id: int
    data: list[int] = msgspec.field(name="bytes", default_factory=list)


class _Logprobs(msgspec.Struct):
    tokens: list[str] = []  # vLLM: "token_id:<id>" with return_tokens_as_token_ids
    content: list[_Prob] = []  # llama-server: the sampled token of the chunk


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
        extra = {"cache_prompt": False, "mirostat": 0, "repeat_last_n": 64, "n_probs": 1}
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


def _by_chunk(ids: Sequence[int], text: str) -> list[Delta]:
    """Tokens whose own bytes the server does not give: the chunk's bytes go to its last
    token (the one that completed the text), the tokens before it carry none."""
    if not ids:
        return [Delta(text=text, token_id=-1)] if text else []
    return [*(Delta(text="", token_id=t, data=b"") for t in ids[:-1]),
            Delta(text="", token_id=ids[-1], data=text.encode("utf-8"))]


def _from_pieces(pieces: Sequence[Piece], text: str) -> list[Delta]:
    """A chunk's tokens from the server's tokenization of its text: each with its own
    bytes when the server gives them and they spell the text, else :func:`_by_chunk`."""
    data = text.encode("utf-8")
    if pieces and all(p.data is not None for p in pieces) and \
            b"".join(p.data or b"" for p in pieces) == data:
        return [Delta(text="", token_id=p.id, data=p.data) for p in pieces]
    return _by_chunk([p.id for p in pieces], text)


class OpenAIHttpEngine(EngineAdapter):
    """Streams ``/v1/completions`` from one replica at ``base_url``.

    Args:
        base_url: e.g. ``http://127.0.0.1:18001``.
        identity: the replica's determinism identity.
        tokenizer: the model's tokenizer, for token counts and token ids; ``None`` when
            the model file is not on this machine: the server then renders, counts and
            tokenizes (its dialect must be one of
            :data:`~worker_adapters.remote_tokenizer.REMOTE_DIALECTS`).
        transport: optional httpx transport (tests).
        connect_timeout_s: seconds to establish a connection.
        constraint: how the engine takes ``CompletionRequest.json_schema``
            (see :data:`Constraint`); ``None`` sends no constraint.
        dialect: the server's kind (see :data:`Dialect`).
        served_model: the model name the server serves, sent where its API takes one.

    Raises:
        InvalidParams: no ``tokenizer`` and a dialect without a tokenize endpoint.
    """

    def __init__(
        self,
        base_url: str,
        identity: EngineIdentity,
        tokenizer: Tokenizer | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout_s: float = 5.0,
        constraint: Constraint | None = None,
        dialect: Dialect = "openai",
        served_model: str | None = None,
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
        self.remote: RemoteTokenizer | None = None if tokenizer is not None else \
            remote_tokenizer(dialect, self._client, served_model)

    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render with the chat template (or take ``prompt`` raw) and count its tokens.

        Raises:
            EngineError: the pool has no model file here, so rendering and counting are
                requests to its server: use :meth:`aprepare` (PLACE-5007).
        """
        if self.tokenizer is None:
            raise EngineError(
                "this pool renders and counts prompts through its engine server: "
                "admission must await aprepare, not call prepare",
                data={"url": self.base_url, "dialect": self.dialect})
        if prompt is not None:  # sent raw, byte for byte (NERVE-4090)
            return PreparedPrompt(text=prompt, tokens_in=self.tokenizer.count(prompt))
        text = self.tokenizer.render(messages or [])
        return PreparedPrompt(text=text, tokens_in=self.tokenizer.count(text), template="gguf")

    async def aprepare(self, *, prompt: str | None,
                       messages: Sequence[dict[str, str]] | None) -> PreparedPrompt:
        """:meth:`prepare` through the server when the model file is not here: the
        server's chat template renders ``messages`` and its tokenizer counts the text
        (one or two requests, PLACE-5007).

        Raises:
            EngineError: the server failed.
            InvalidParams: ``messages`` on a server that cannot render them
                (``data.field`` ``input.messages``).
        """
        if self.remote is None:
            return self.prepare(prompt=prompt, messages=messages)
        if prompt is not None:  # sent raw, byte for byte (NERVE-4090)
            return PreparedPrompt(text=prompt, tokens_in=await self.remote.count(prompt))
        text = await self.remote.render(messages or [])
        return PreparedPrompt(text=text, tokens_in=await self.remote.count(text),
                              template=f"server:{self.dialect}")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """POST a streaming completion; yield its tokens as Deltas, then Finish.

        If the engine's stream ends with no ``finish_reason`` (e.g. it was interrupted
        by another request), no Finish is yielded. Tokens come from the chunks as
        :meth:`_deltas` says; on a server that cannot tokenize while it streams
        (llama-cpp-python without a model file here) they are yielded once the engine's
        stream has ended, after the tokenize requests that give their ids.

        Raises:
            EngineError: connection failure, non-200 status, an undecodable chunk, or a
                failed tokenize request.
        """
        body = completion_body(request, self.constraint, self.dialect)
        self.requests += 1
        defer = self.remote is not None and not self.remote.tokenize_while_streaming
        held: list[_Choice] = []
        finish: Finish | None = None
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
                        break
                    chunk = _chunk_decoder.decode(payload)
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    if defer:
                        held.append(choice)
                    else:
                        for delta in await self._deltas(choice):
                            self.tokens_generated += 1
                            yield delta
                    if choice.finish_reason:
                        finish = Finish(reason=choice.finish_reason)
                        break
            for choice in held:
                for delta in await self._deltas(choice):
                    self.tokens_generated += 1
                    yield delta
            if finish is not None:
                yield finish
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

    async def _deltas(self, choice: _Choice) -> list[Delta]:
        """The tokens of one chunk (PLACE-5005, PLACE-5007).

        * ``vllm``: the ids the chunk names, with their vocabulary bytes (model file
          here) or the chunk's bytes on its last token;
        * ``llama-server``: the sampled token's id and exact bytes from ``n_probs``
          (:meth:`_sampled`);
        * text-only chunks: with the model file, the text as one token whose id is
          looked up (-1 when it is not one vocabulary piece); without it, the server's
          tokenization of the text (:func:`_from_pieces`).
        """
        lp = choice.logprobs
        if self.dialect == "vllm" and lp is not None and lp.tokens:
            ids = [int(name.removeprefix("token_id:")) for name in lp.tokens]
            if self.tokenizer is not None:
                return [Delta(text="", token_id=t, data=self.tokenizer.piece(t)) for t in ids]
            return _by_chunk(ids, choice.text)
        if self.dialect == "llama-server" and lp is not None and lp.content:
            return await self._sampled(choice.text, lp.content)
        if not choice.text:
            return []
        if self.remote is None:
            assert self.tokenizer is not None  # one of the two is always set
            return [Delta(text=choice.text, token_id=self.tokenizer.token_id(choice.text))]
        return _from_pieces(await self.remote.pieces(choice.text), choice.text)

    async def _sampled(self, text: str, probs: Sequence[_Prob]) -> list[Delta]:
        """llama-server's chunk: its text and the token it sampled last (id, bytes).

        The server sends no chunk for a token that leaves its text inside a UTF-8
        character or inside a possible stop string: the next chunk's text then begins
        with that token's bytes, and its id is missing. Those ids are recovered with the
        server's tokenization of the chunk's text when it ends with the sampled token and
        spells the text exactly; otherwise the held bytes are one token of id -1. A chunk
        cut by a stop string is its token cut to the text shown.
        """
        sampled = [Delta(text="", token_id=p.id, data=bytes(p.data)) for p in probs]
        data = text.encode("utf-8")
        got = b"".join(d.data or b"" for d in sampled)
        if got == data:
            return sampled
        if not data.endswith(got) or not got:
            return [Delta(text="", token_id=sampled[-1].token_id, data=data)] if data else []
        if self.remote is not None:
            pieces = await self.remote.pieces(text)
            tail = [p.id for p in pieces[-len(sampled):]]
            if tail == [d.token_id for d in sampled] and all(p.data is not None
                                                              for p in pieces) and \
                    b"".join(p.data or b"" for p in pieces) == data:
                return [Delta(text="", token_id=p.id, data=p.data) for p in pieces]
        return [Delta(text="", token_id=-1, data=data[:len(data) - len(got)]), *sampled]

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
