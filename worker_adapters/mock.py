"""A seeded, deterministic mock engine for fast tests and benchmarks.

The default handler produces words drawn from a small vocabulary by a PRNG seeded from
``(seed, prompt)`` (``temperature == 0`` ignores the seed, like greedy decoding), so the
same request always yields the same tokens. A request with a ``json_schema`` gets a
JSON document built from the schema by the same PRNG (:func:`mock_instance`), streamed
in small pieces, like a grammar-constrained engine. Every token carries its bytes; with
``utf8_split`` every fourth token is an accented or Japanese word whose first multi-byte
character is split over two tokens, as a real tokenizer does (STREAM-2006). Stop strings
end the stream as in the llama.cpp worker (:class:`~worker_adapters.token_bytes.StopFilter`).
Tests pass their own handler to script tokens, delays and faults, in the manner of
``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import blake3

from worker_adapters.base import (
    CompletionRequest,
    Delta,
    EngineAdapter,
    EngineIdentity,
    Finish,
    PreparedPrompt,
    StreamItem,
)
from worker_adapters.token_bytes import StopFilter

__all__ = ["MockEngine", "MockHandler", "default_handler", "mock_identity", "mock_instance"]

MockHandler = Callable[[CompletionRequest], AsyncIterator[StreamItem]]

_WORDS = (
    "the", "agent", "plans", "a", "tool", "call", "and", "reads", "facts", "from", "log",
    "replay", "is", "byte", "exact", "stream", "token", "seed", "pool", "step", "run",
    "budget", "policy", "gate", "checkpoint", "flow", "engine", "model", "placement", ".",
)
_UTF8_WORDS = ("café", "élève", "日本", "naïve", "über")
"""Words the ``utf8_split`` mock splits inside their first multi-byte character."""


def _split_utf8(word: str) -> list[bytes]:
    """A word's bytes as two tokens, cut one byte into its first multi-byte character."""
    data = word.encode()
    cut = next(k for k, ch in enumerate(data) if ch >= 0x80) + 1
    return [data[:cut], data[cut:]]


def mock_identity(model_hash: str = "sha256:" + "0" * 64, **settings: Any) -> EngineIdentity:
    """Identity of the mock engine; ``settings`` fold into its build fingerprint."""
    fp = "b3:" + blake3.blake3(repr(sorted(settings.items())).encode()).hexdigest()
    return EngineIdentity(name="mock", version="1", build_fingerprint=fp,
                          model_hash=model_hash, settings=dict(settings),
                          batch_invariant=True)


def mock_instance(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A JSON value satisfying the common keywords of ``schema``, drawn with ``rng``.

    Handles ``const``, ``enum``, ``anyOf``/``oneOf`` (one branch), ``type`` object (every
    required property, plus the optional ones), array (``minItems``, at least one item,
    at most ``maxItems``), string (``minLength``/``maxLength``), integer and number
    (``minimum``/``maximum``), boolean and null. Anything else gives ``{}``. Strings
    stop growing at 4096 characters and arrays at 64 items.
    """
    if not isinstance(schema, dict) or depth > 8:
        return {}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return mock_instance(rng.choice(schema[key]), rng, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0] if kind else "object"
    if kind == "object":
        props = schema.get("properties", {})
        return {name: mock_instance(sub, rng, depth + 1) for name, sub in props.items()}
    if kind == "array":
        lo = min(int(schema.get("minItems", 1)), 64)
        hi = min(int(schema.get("maxItems", max(lo, 2))), 64)
        n = max(lo, min(hi, 1 + rng.randrange(2)))
        return [mock_instance(schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if kind == "string":
        text = _WORDS[rng.randrange(len(_WORDS) - 1)]
        while len(text) < min(int(schema.get("minLength", 0)), 4096):
            text += " " + _WORDS[rng.randrange(len(_WORDS) - 1)]
        return text[: int(schema.get("maxLength", len(text)))]
    if kind in ("integer", "number"):
        lo = int(schema.get("minimum", 0))
        return max(lo, min(int(schema.get("maximum", lo + 9)), lo + rng.randrange(10)))
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def default_handler(
    tokens_per_s: float = 0.0,
    length: int | None = None,
    fail_after: int | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    utf8_split: bool = False,
) -> MockHandler:
    """Build the default seeded handler.

    Args:
        tokens_per_s: decode speed; 0 means as fast as possible (still yields to the loop).
        length: tokens before ``Finish("stop")``; default derives 8..40 from the prompt.
        fail_after: end the stream after this many tokens *without* a ``Finish``.
        sleep: injected sleep, so tests can drive time.
        utf8_split: every fourth token is the first half of a multi-byte word (the next
            token completes it); both count as tokens.
    """

    async def handler(req: CompletionRequest) -> AsyncIterator[StreamItem]:
        key = blake3.blake3(req.prompt.encode()).digest(length=8)
        base = int.from_bytes(key, "big")
        rng = random.Random(base if req.temperature == 0 else base ^ req.seed)  # noqa: S311
        pieces: list[str] | None = None
        if req.json_schema is not None:
            doc = json.dumps(mock_instance(req.json_schema, rng), separators=(",", ":"))
            pieces = [doc[k:k + 4] for k in range(0, len(doc), 4)]
        n = len(pieces) if pieces is not None else (
            length if length is not None else 8 + base % 33)
        finish = "stop"
        if n > req.max_tokens:
            n, finish = req.max_tokens, "length"
        delay = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        pause = _zero_sleep() if delay == 0 and sleep is anyio.sleep else sleep
        stops = StopFilter(req.stop)
        tokens: list[tuple[int, bytes]] = []
        sampled = 0
        for i in range(n):
            if not tokens:
                tokens = _next_tokens(i, pieces, rng, utf8_split)
            tid, data = tokens.pop(0)
            if fail_after is not None and i >= fail_after:
                return
            await pause(delay)
            sampled += 1
            for rid, rdata in stops.push(tid, data):
                yield Delta(text=rdata.decode("utf-8", "replace"), token_id=rid, data=rdata)
            if stops.matched:
                yield Finish(reason="stop", tokens=sampled)
                return
        for rid, rdata in stops.flush():
            yield Delta(text=rdata.decode("utf-8", "replace"), token_id=rid, data=rdata)
        yield Finish(reason=finish, tokens=sampled)

    return handler


def _zero_sleep() -> Callable[[float], Awaitable[None]]:
    """The cheapest way to yield to the event loop once per token, looked up once per
    request: asyncio's own ``sleep(0)`` on asyncio (``anyio.sleep`` finds the running
    async library on every call, about 1 µs a token), ``anyio.sleep`` elsewhere."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another async library (trio) runs this request
        return anyio.sleep
    return asyncio.sleep


def _next_tokens(i: int, pieces: list[str] | None, rng: random.Random,
                 utf8_split: bool) -> list[tuple[int, bytes]]:
    """The next token(s) ``(id, bytes)`` of the default handler at token index ``i``."""
    if pieces is not None:
        return [(1000 + sum(map(ord, pieces[i])), pieces[i].encode())]
    sep = " " if i else ""
    if utf8_split and i % 4 == 3:
        idx = rng.randrange(len(_UTF8_WORDS))
        first, rest = _split_utf8(sep + _UTF8_WORDS[idx])
        return [(900 + 2 * idx, first), (901 + 2 * idx, rest)]
    idx = rng.randrange(len(_WORDS))
    return [(100 + idx, (sep + _WORDS[idx]).encode())]


class MockEngine(EngineAdapter):
    """An in-process engine driven by a handler (see :func:`default_handler`)."""

    constrained_decoding: str | None = "mock"

    def __init__(self, handler: MockHandler | None = None,
                 identity: EngineIdentity | None = None) -> None:
        super().__init__(identity or mock_identity())
        self.handler = handler or default_handler()
        self.cancelled = 0
        self.last_request: CompletionRequest | None = None

    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render messages as ``role: content`` lines (template ``mock``), or take
        ``prompt`` raw; one token per whitespace word."""
        if prompt is not None:
            return PreparedPrompt(text=prompt, tokens_in=len(prompt.split()) + 1)
        text = "".join(f"{m['role']}: {m['content']}\n" for m in (messages or []))
        return PreparedPrompt(text=text, tokens_in=len(text.split()) + 1, template="mock")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """Yield the handler's items, counting requests and generated tokens."""
        self.requests += 1
        self.last_request = request
        gen = self.handler(request)
        finished = False
        try:
            async for item in gen:
                if isinstance(item, Delta):
                    self.tokens_generated += 1
                else:
                    finished = True
                yield item
        finally:
            if not finished:
                self.cancelled += 1
            await gen.aclose()  # type: ignore[attr-defined]
