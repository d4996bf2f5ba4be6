"""Adapter for the llama.cpp worker (``worker_adapters.llamacpp_worker``) over loopback HTTP.

The worker streams engine token ids and their exact bytes as NDJSON, so every ``Delta``
is one token the engine sampled, with its real id (STREAM-2006). Every sampling parameter
and the seed are sent explicitly; a JSON Schema constraint is compiled to GBNF here
and sent as ``grammar`` (NERVE-4013). The HTTP transport is injectable
(``httpx.MockTransport`` in tests).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from typing import Any

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
from worker_adapters.llamacpp_worker import WorkerLine
from worker_adapters.openai_http import Tokenizer, constraint_fields

__all__ = ["RANDOM_SEED", "LlamaCppEngine", "WorkerLine", "generate_body"]

RANDOM_SEED = 0xFFFFFFFF
"""llama.cpp's ``LLAMA_DEFAULT_SEED``: as a sampler seed it means "pick one at random"."""


_line = msgspec.json.Decoder(WorkerLine)


def generate_body(request: CompletionRequest) -> dict[str, Any]:
    """The ``POST /v1/generate`` body: every sampling parameter explicit (PLACE-5003).

    Raises:
        InvalidParams: the request's ``json_schema`` cannot be compiled to GBNF.
    """
    body: dict[str, Any] = {
        "prompt": request.prompt, "seed": request.seed, "temperature": request.temperature,
        "top_k": request.top_k, "top_p": request.top_p, "min_p": request.min_p,
        "repeat_penalty": request.repeat_penalty, "max_tokens": request.max_tokens,
        "stop": list(request.stop),
    }
    body.update(constraint_fields("gbnf", request.json_schema))
    return body


class LlamaCppEngine(EngineAdapter):
    """Streams completions from one llama.cpp worker replica at ``base_url``.

    Args:
        base_url: e.g. ``http://127.0.0.1:18001``.
        identity: the replica's determinism identity.
        tokenizer: the model's tokenizer and chat template, for ``prepare``.
        transport: optional httpx transport (tests).
        connect_timeout_s: seconds to establish a connection.
    """

    constrained_decoding = "gbnf"

    def __init__(self, base_url: str, identity: EngineIdentity, tokenizer: Tokenizer, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 connect_timeout_s: float = 5.0) -> None:
        super().__init__(identity)
        self.base_url = base_url
        self.tokenizer = tokenizer
        self._client = httpx.AsyncClient(
            base_url=base_url, transport=transport,
            timeout=httpx.Timeout(None, connect=connect_timeout_s))

    def prepare(self, *, prompt: str | None, messages: Sequence[dict[str, str]] | None) -> \
            PreparedPrompt:
        """Render with the GGUF's chat template (or take ``prompt`` raw, byte for byte) and
        count its tokens (NERVE-4090)."""
        if prompt is not None:
            return PreparedPrompt(text=prompt, tokens_in=self.tokenizer.count(prompt))
        text = self.tokenizer.render(messages or [])
        return PreparedPrompt(text=text, tokens_in=self.tokenizer.count(text), template="gguf")

    def check_seed(self, seed: int) -> None:
        """llama.cpp keeps a seed's low 32 bits, and all ones there (``0xFFFFFFFF``) asks
        it for a random seed: such a seed is refused (PLACE-5003).

        Raises:
            InvalidParams: the seed's low 32 bits are all ones.
        """
        if seed & RANDOM_SEED == RANDOM_SEED:
            raise InvalidParams("llama.cpp takes a seed whose low 32 bits are all ones "
                                "(0xFFFFFFFF) as a request for a random seed; use another",
                                data={"field": "params.seed", "seed": seed})

    def check_constraint(self, schema: dict[str, Any]) -> None:
        """Compile the schema to GBNF now (cached), so a schema the grammar cannot express
        is refused at submission (INVALID_PARAMS) rather than mid-stream."""
        constraint_fields("gbnf", schema)

    async def engine_report(self) -> dict[str, Any]:
        """``GET /v1/engine``: what the worker observed of itself (PLACE-5004).

        Raises:
            EngineError: the worker did not answer 200.
        """
        try:
            resp = await self._client.get("/v1/engine")
        except httpx.HTTPError as exc:
            raise EngineError(f"engine request failed: {exc}",
                              data={"url": self.base_url}) from exc
        if resp.status_code != 200:
            raise EngineError(f"engine answered HTTP {resp.status_code} to GET /v1/engine",
                              data={"status": resp.status_code, "url": self.base_url})
        report: dict[str, Any] = resp.json()
        return report

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamItem]:
        """POST one completion; yield one Delta per token the worker releases, then Finish.

        A body that ends without a finish line yields no Finish (an interrupted stream).
        Closing the iterator closes the connection, which the worker notices before its
        next token: the request is aborted.

        Raises:
            EngineError: connection failure, non-200 status, an undecodable line, or an
                ``error`` line from the worker.
        """
        body = generate_body(request)
        self.requests += 1
        finish: Finish | None = None
        try:
            async with self._client.stream("POST", "/v1/generate", json=body) as resp:
                if resp.status_code != 200:
                    detail = (await resp.aread())[:500].decode("utf-8", "replace")
                    raise EngineError(
                        f"engine answered HTTP {resp.status_code}",
                        data={"status": resp.status_code, "detail": detail,
                              "url": self.base_url})
                async for raw in resp.aiter_lines():
                    if not raw:
                        continue
                    line = _line.decode(raw)
                    if line.id is not None:
                        self.tokens_generated += 1
                        yield Delta(text="", token_id=line.id,
                                    data=base64.b64decode(line.b or ""))
                    elif line.finish_reason is not None:
                        # The body ends right after this line: read that end, so that the
                        # connection goes back to the pool instead of being closed.
                        finish = Finish(reason=line.finish_reason,
                                        tokens=line.completion_tokens)
                    elif line.error is not None:
                        raise EngineError(f"the engine failed: {line.error}",
                                          data={"url": self.base_url})
            if finish is not None:
                yield finish
        except httpx.HTTPError as exc:
            raise EngineError(f"engine request failed: {type(exc).__name__}: {exc}",
                              data={"url": self.base_url}) from exc
        except (msgspec.DecodeError, ValueError) as exc:
            raise EngineError(f"engine sent an undecodable line: {exc}",
                              data={"url": self.base_url}) from exc

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()
