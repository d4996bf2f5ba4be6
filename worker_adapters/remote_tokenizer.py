"""Rendering, counting and token ids through a remote engine server's own endpoints.

A remote ``openai_http`` pool whose model has no ``path`` has no model file on this
machine, so the chat template, the tokenizer and the vocabulary are the engine server's
(PLACE-5007). Each :class:`RemoteTokenizer` speaks one server's dialect:

=====================  ==========================  ===========================  =================
dialect                render ``messages``          count a prompt               ids of a text
=====================  ==========================  ===========================  =================
``llama-server``       ``POST /apply-template``     ``POST /tokenize``            ``POST /tokenize``
                                                    (``add_special``)             (``with_pieces``)
``vllm``               ``POST /tokenize``           ``POST /tokenize``            ``POST /tokenize``
                       (``messages``) then          (``prompt``)
                       ``POST /detokenize``
``llama-cpp-python``   refused: no template         ``POST /extras/tokenize/      ``POST /extras/
                       endpoint                     count``                       tokenize``
=====================  ==========================  ===========================  =================

:meth:`RemoteTokenizer.report` reads what the server says of itself (version, served
model, context, settings) for the pool's identity. Every failure of the server is an
``ENGINE_ERROR`` naming the URL and the endpoint; nothing here is ever retried.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx
import msgspec

from contracts.errors import EngineError, InvalidParams
from worker_adapters.base import fingerprint

__all__ = [
    "REMOTE_DIALECTS",
    "LlamaCppPythonTokenizer",
    "LlamaServerTokenizer",
    "Piece",
    "RemoteTokenizer",
    "VllmTokenizer",
    "remote_tokenizer",
]


class Piece(msgspec.Struct, frozen=True):
    """One vocabulary token of a tokenized text: its id and, where the server says so,
    its exact bytes (``None`` when the server gives ids only)."""

    id: int
    data: bytes | None = None


MAX_CACHED_PIECES = 65_536
"""Texts whose tokenization an adapter keeps (the cache is emptied when full)."""


class RemoteTokenizer(abc.ABC):
    """One engine server's chat template, tokenizer and self-report, over HTTP.

    Args:
        client: the adapter's HTTP client, whose ``base_url`` is the replica.
        model: the served model's name, sent where the server's API takes one.

    Attributes:
        tokenize_while_streaming: the server answers a tokenize request while it streams
            a completion. False for llama-cpp-python, whose server runs one request at a
            time: the adapter then resolves a stream's token ids after its last chunk.
    """

    dialect: ClassVar[str]
    tokenize_while_streaming: ClassVar[bool] = True
    timeout_s: ClassVar[float] = 60.0
    """Seconds one request may take (a llama-cpp-python server answers only once the
    completion it is streaming has ended)."""

    def __init__(self, client: httpx.AsyncClient, model: str | None = None) -> None:
        self.client = client
        self.model = model
        self._pieces: dict[str, list[Piece]] = {}

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._call("POST", path, body)

    async def _get(self, path: str) -> Any:
        return await self._call("GET", path, None)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        """One request; the decoded JSON answer.

        Raises:
            EngineError: no answer, a non-200 status, or a body that is not JSON.
        """
        url = str(self.client.base_url)
        try:
            resp = await self.client.request(method, path, json=body,
                                             timeout=httpx.Timeout(self.timeout_s, connect=5.0))
        except httpx.HTTPError as exc:
            raise EngineError(f"engine request {method} {path} failed: {exc}",
                              data={"url": url, "endpoint": path}) from exc
        if resp.status_code != 200:
            raise EngineError(f"engine answered HTTP {resp.status_code} to {method} {path}",
                              data={"url": url, "endpoint": path, "status": resp.status_code,
                                    "detail": resp.content[:500].decode("utf-8", "replace")})
        try:
            return msgspec.json.decode(resp.content)
        except msgspec.DecodeError as exc:
            raise EngineError(f"engine sent an undecodable answer to {method} {path}",
                              data={"url": url, "endpoint": path}) from exc

    @staticmethod
    def _field(answer: Any, key: str, kind: type | tuple[type, ...], path: str) -> Any:
        """``answer[key]`` checked to be of ``kind``.

        Raises:
            EngineError: the answer lacks it or has another type there.
        """
        value = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise EngineError(f"engine answer to {path} has no valid {key!r}",
                              data={"endpoint": path, "field": key})
        return value

    @abc.abstractmethod
    async def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The server's chat template applied to ``messages``, generation prompt appended.

        Raises:
            EngineError: the server failed.
            InvalidParams: the server cannot render chat messages (``input.messages``).
        """

    @abc.abstractmethod
    async def count(self, text: str) -> int:
        """Tokens the server evaluates for ``text`` sent as a completion prompt (BOS
        included where the model adds one).

        Raises:
            EngineError: the server failed.
        """

    @abc.abstractmethod
    async def _tokenize(self, text: str) -> list[Piece]:
        """``text`` as plain generated text, in vocabulary tokens, no BOS."""

    async def pieces(self, text: str) -> list[Piece]:
        """The tokens of a streamed text, cached per text (at most
        :data:`MAX_CACHED_PIECES` texts): one request per text not seen before.

        Raises:
            EngineError: the server failed.
        """
        found = self._pieces.get(text)
        if found is None:
            found = await self._tokenize(text)
            if len(self._pieces) >= MAX_CACHED_PIECES:
                self._pieces.clear()
            self._pieces[text] = found
        return found

    @abc.abstractmethod
    async def report(self) -> dict[str, Any]:
        """What the server says of itself: ``{"dialect", "version", "model",
        "context_tokens", "settings"}`` (``context_tokens`` None when not reported).

        Raises:
            EngineError: the server failed.
        """

    async def _models(self) -> list[dict[str, Any]]:
        """The ``data`` of ``GET /v1/models``."""
        data = self._field(await self._get("/v1/models"), "data", list, "/v1/models")
        return [m for m in data if isinstance(m, dict)]


def _ints(values: Any, path: str) -> list[int]:
    if not isinstance(values, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise EngineError(f"engine answer to {path} has no list of token ids",
                          data={"endpoint": path, "field": "tokens"})
    return values


class LlamaServerTokenizer(RemoteTokenizer):
    """llama.cpp's ``llama-server``."""

    dialect = "llama-server"

    async def render(self, messages: Sequence[dict[str, str]]) -> str:
        """``POST /apply-template`` with the generation prompt (its ``prompt``)."""
        answer = await self._post("/apply-template", {"messages": list(messages),
                                                      "add_generation_prompt": True})
        return str(self._field(answer, "prompt", str, "/apply-template"))

    async def count(self, text: str) -> int:
        """``POST /tokenize`` as a completion prompt is tokenized: special tokens parsed,
        BOS added where the model adds it."""
        answer = await self._post("/tokenize", {"content": text, "add_special": True,
                                                "parse_special": True})
        return len(_ints(self._field(answer, "tokens", list, "/tokenize"), "/tokenize"))

    async def _tokenize(self, text: str) -> list[Piece]:
        """``POST /tokenize`` with ``with_pieces``: each piece is a string, or its bytes
        as a list of integers when it is not valid UTF-8 on its own."""
        answer = await self._post("/tokenize", {"content": text, "add_special": False,
                                                "parse_special": False, "with_pieces": True})
        out = []
        for item in self._field(answer, "tokens", list, "/tokenize"):
            piece = item.get("piece") if isinstance(item, dict) else None
            tid = item.get("id") if isinstance(item, dict) else None
            if not isinstance(tid, int) or isinstance(tid, bool):
                raise EngineError("engine answer to /tokenize has a piece without an id",
                                  data={"endpoint": "/tokenize", "field": "tokens"})
            if isinstance(piece, str):
                data: bytes | None = piece.encode("utf-8")
            else:
                data = bytes(_ints(piece, "/tokenize")) if isinstance(piece, list) else None
            out.append(Piece(tid, data))
        return out

    async def report(self) -> dict[str, Any]:
        """``GET /props``: ``build_info``, ``model_path``, the slots' ``n_ctx``, the
        default generation settings and the chat template (as its hash)."""
        props = await self._get("/props")
        if not isinstance(props, dict):
            raise EngineError("engine answer to /props is not an object",
                              data={"endpoint": "/props"})
        defaults = props.get("default_generation_settings") or {}
        n_ctx = defaults.get("n_ctx") if isinstance(defaults, dict) else None
        params = defaults.get("params") if isinstance(defaults, dict) else None
        return {"dialect": self.dialect, "version": str(props.get("build_info", "unknown")),
                "model": str(props.get("model_path", "unknown")),
                "context_tokens": n_ctx if isinstance(n_ctx, int) else None,
                "settings": {"total_slots": props.get("total_slots"),
                             "chat_template": fingerprint(str(props.get("chat_template", ""))),
                             "default_generation_settings": params
                             if isinstance(params, dict) else {}}}


class VllmTokenizer(RemoteTokenizer):
    """vLLM's OpenAI-compatible server (``vllm serve``)."""

    dialect = "vllm"

    def _body(self, **fields: Any) -> dict[str, Any]:
        return {**({"model": self.model} if self.model else {}), **fields}

    async def render(self, messages: Sequence[dict[str, str]]) -> str:
        """``POST /tokenize`` with ``messages`` and the generation prompt, then
        ``POST /detokenize`` of those ids: the rendered text (special tokens spelled out)."""
        answer = await self._post("/tokenize", self._body(
            messages=list(messages), add_generation_prompt=True, add_special_tokens=False))
        ids = _ints(self._field(answer, "tokens", list, "/tokenize"), "/tokenize")
        text = await self._post("/detokenize", self._body(tokens=ids))
        return str(self._field(text, "prompt", str, "/detokenize"))

    async def count(self, text: str) -> int:
        """``POST /tokenize`` of ``prompt`` with the special tokens a completion adds."""
        answer = await self._post("/tokenize", self._body(prompt=text,
                                                          add_special_tokens=True))
        return int(self._field(answer, "count", int, "/tokenize"))

    async def _tokenize(self, text: str) -> list[Piece]:
        answer = await self._post("/tokenize", self._body(prompt=text,
                                                          add_special_tokens=False))
        return [Piece(t) for t in _ints(self._field(answer, "tokens", list, "/tokenize"),
                                        "/tokenize")]

    async def report(self) -> dict[str, Any]:
        """``GET /version`` and the first model of ``GET /v1/models`` (its ``root`` and
        ``max_model_len``)."""
        version = self._field(await self._get("/version"), "version", str, "/version")
        models = await self._models()
        first = models[0] if models else {}
        ctx = first.get("max_model_len")
        return {"dialect": self.dialect, "version": str(version),
                "model": str(first.get("root") or first.get("id") or "unknown"),
                "context_tokens": ctx if isinstance(ctx, int) else None,
                "settings": {"served_model": str(first.get("id") or "")}}


class LlamaCppPythonTokenizer(RemoteTokenizer):
    """llama-cpp-python's server (``python -m llama_cpp.server``).

    It has no chat-template endpoint, so chat ``messages`` are refused; and it serves one
    request at a time (a request that arrives during a stream waits for it, or interrupts
    it unless the server runs with ``--interrupt_requests false``).
    """

    dialect = "llama-cpp-python"
    tokenize_while_streaming = False

    def __init__(self, client: httpx.AsyncClient, model: str | None = None) -> None:
        super().__init__(client, model)
        self._head: list[int] | None = None

    async def render(self, messages: Sequence[dict[str, str]]) -> str:
        """Refused: the server exposes no chat template.

        Raises:
            InvalidParams: always, naming ``input.messages``.
        """
        raise InvalidParams(
            "this pool's engine (a llama-cpp-python server without a model file here) "
            "cannot render chat messages: send a prompt, or give the pool's model a path",
            data={"field": "input.messages", "dialect": self.dialect})

    async def _ids(self, text: str) -> list[int]:
        answer = await self._post("/extras/tokenize", {"input": text})
        return _ints(self._field(answer, "tokens", list, "/extras/tokenize"),
                     "/extras/tokenize")

    async def count(self, text: str) -> int:
        """``POST /extras/tokenize/count``: the server tokenizes as for a completion."""
        answer = await self._post("/extras/tokenize/count", {"input": text})
        return int(self._field(answer, "count", int, "/extras/tokenize/count"))

    async def _tokenize(self, text: str) -> list[Piece]:
        """``POST /extras/tokenize``, less the BOS it adds (the ids of ``""``)."""
        if self._head is None:
            self._head = await self._ids("")
        ids = await self._ids(text)
        if ids[:len(self._head)] == self._head:
            ids = ids[len(self._head):]
        return [Piece(t) for t in ids]

    async def report(self) -> dict[str, Any]:
        """The library version of ``GET /openapi.json`` and the served models of
        ``GET /v1/models`` (their aliases, by default the model path)."""
        info = self._field(await self._get("/openapi.json"), "info", dict, "/openapi.json")
        models = sorted(str(m.get("id")) for m in await self._models())
        return {"dialect": self.dialect, "version": f"llama-cpp-python {info.get('version')}",
                "model": ",".join(models) or "unknown", "context_tokens": None,
                "settings": {}}


REMOTE_DIALECTS: dict[str, type[RemoteTokenizer]] = {
    "llama-server": LlamaServerTokenizer,
    "vllm": VllmTokenizer,
    "llama-cpp-python": LlamaCppPythonTokenizer,
}
"""The dialects whose servers can render, count and tokenize for a pool with no model
file; ``openai`` is not among them."""


def remote_tokenizer(dialect: str, client: httpx.AsyncClient,
                     model: str | None = None) -> RemoteTokenizer:
    """The remote tokenizer of ``dialect`` on ``client``.

    Raises:
        InvalidParams: the dialect has no tokenize endpoint (``options.dialect``).
    """
    try:
        return REMOTE_DIALECTS[dialect](client, model)
    except KeyError:
        raise InvalidParams(
            f"an openai_http pool without a model file needs a server that tokenizes: "
            f"dialect {dialect!r} is none of {sorted(REMOTE_DIALECTS)}",
            data={"field": "options.dialect", "dialect": dialect}) from None
