"""An OpenAI-compatible HTTP server around the seeded mock engine, for ``tools.bench``.

It lets orchestratord (an ``openai_http`` pool), the LiteLLM proxy and a plain client call
the same engine over HTTP, so that what each of them adds is measured against the same
thing (``python -m tools.bench.overhead``). It is a raw ASGI app on Granian (no framework
on its path) and speaks just enough of llama.cpp's ``llama-server`` for an orchestratord
pool without a model file (PLACE-5007):

* ``GET /v1/models``, ``GET /props`` (its self-report), ``POST /tokenize`` (one token per
  whitespace-separated word, with pieces), ``POST /apply-template``;
* ``POST /v1/completions`` and ``POST /v1/chat/completions``, streamed (``stream: true``,
  one chunk per token with the sampled token's id and bytes as ``logprobs.content``, then
  ``data: [DONE]``) or not;
* ``GET /stats``: the completions it serves at once, ``{"current": n, "max": n, "total":
  n}`` (:class:`Concurrency`), so that a test or the multi-process crash loop can count
  what a replica with ``slots_per_replica`` slots was asked to do at once (PG-9107).

A completion counts from the moment its request arrives until its answer is sent or its
client is gone: a client that disconnects (an orchestratord killed with a request in
flight) stops its completion and its count at once, as a real engine server frees the slot
of a request whose connection dropped.

The tokens are the mock's (:func:`worker_adapters.mock.default_handler`, ``length =
max_tokens``): the same prompt, seed and ``max_tokens`` give the same text on every path.
Run it as ``python -m tools.bench.mock_openai PORT [--chunk-delay-ms MS]``; with a delay,
each streamed chunk is sent that long after the previous one (a paced engine, so that
requests overlap).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from worker_adapters.base import CompletionRequest, Delta, Finish
from worker_adapters.mock import default_handler

__all__ = ["MODEL", "Concurrency", "app", "main", "make_app", "spawn", "stats"]

MODEL = "mock-openai"
"""The one model the server serves."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_enc = msgspec.json.Encoder()
_PROPS = {"build_info": "mock-openai 1", "model_path": MODEL, "total_slots": 64,
          "chat_template": "{role}: {content}\n",
          "default_generation_settings": {"n_ctx": 1_000_000, "params": {}}}


def _request(body: dict[str, Any], prompt: str) -> CompletionRequest:
    return CompletionRequest(prompt=prompt, seed=int(body.get("seed") or 0),
                             temperature=float(body.get("temperature") or 0.0), top_k=40,
                             top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                             max_tokens=int(body.get("max_tokens") or 16))


def _render(messages: list[dict[str, Any]]) -> str:
    return "".join(f"{m.get('role', '')}: {m.get('content', '')}\n" for m in messages)


def _length_is_max_tokens(req: CompletionRequest) -> Any:
    return default_handler(length=req.max_tokens)(req)


async def _json(send: Send, value: Any, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": _enc.encode(value)})


async def _read(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    raw = b"".join(chunks)
    value = msgspec.json.decode(raw) if raw else {}
    return value if isinstance(value, dict) else {}


def _chunk(kind: str, text: str, tid: int | None, data: bytes,
           finish: str | None) -> dict[str, Any]:
    logprobs = ({"content": [{"id": tid, "bytes": list(data)}]} if tid is not None
                else None)
    if kind == "chat":
        delta = {"role": "assistant", "content": text} if text or finish is None else {}
        return {"id": "cmpl-mock", "object": "chat.completion.chunk", "model": MODEL,
                "created": 0, "choices": [{"index": 0, "delta": delta,
                                           "finish_reason": finish}]}
    return {"id": "cmpl-mock", "object": "text_completion", "model": MODEL, "created": 0,
            "choices": [{"index": 0, "text": text, "finish_reason": finish,
                         "logprobs": logprobs}]}


class Concurrency:
    """How many completions are in flight at once (PG-9107's test and the crash loop).

    Attributes:
        current: completions in flight now.
        max: the most in flight at once since the server started.
        total: completions ever started.
    """

    def __init__(self) -> None:
        self.current = 0
        self.max = 0
        self.total = 0

    def enter(self) -> None:
        """A completion starts: count it, and raise ``max`` if ``current`` passes it."""
        self.current += 1
        self.total += 1
        self.max = max(self.max, self.current)

    def leave(self) -> None:
        """A completion ended (answered, failed or abandoned by its client)."""
        self.current -= 1

    def snapshot(self) -> dict[str, int]:
        """``{"current": n, "max": n, "total": n}``: what ``GET /stats`` answers."""
        return {"current": self.current, "max": self.max, "total": self.total}


async def _complete(send: Send, body: dict[str, Any], kind: str, delay_s: float) -> None:
    prompt = (_render(body.get("messages") or []) if kind == "chat"
              else str(body.get("prompt", "")))
    stream = _length_is_max_tokens(_request(body, prompt))
    if not body.get("stream"):
        pieces: list[str] = []
        finish = "stop"
        async for item in stream:
            if isinstance(item, Delta):
                pieces.append(item.text)
            elif isinstance(item, Finish):
                finish = item.reason
        text = "".join(pieces)
        choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant",
                                                           "content": text},
                                   "finish_reason": finish} if kind == "chat"
                                  else {"index": 0, "text": text, "finish_reason": finish})
        await _json(send, {"id": "cmpl-mock", "object": "chat.completion" if kind == "chat"
                           else "text_completion", "model": MODEL, "created": 0,
                           "choices": [choice],
                           "usage": {"prompt_tokens": len(prompt.split()) + 1,
                                     "completion_tokens": len(pieces),
                                     "total_tokens": len(prompt.split()) + 1 + len(pieces)}})
        return
    await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    async for item in stream:
        if isinstance(item, Delta):
            chunk = _chunk(kind, item.text, item.token_id, item.data or b"", None)
        elif isinstance(item, Finish):
            chunk = _chunk(kind, "", None, b"", item.reason)
        else:
            continue
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await send({"type": "http.response.body",
                    "body": b"data: " + _enc.encode(chunk) + b"\n\n", "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _disconnected(receive: Receive) -> None:
    """Return once the client is gone (the ASGI ``http.disconnect`` message)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _counted(receive: Receive, send: Send, kind: str, delay_s: float,
                   counter: Concurrency) -> None:
    """One completion, counted in ``counter`` from its arrival until it is answered or
    its client is gone (then it is stopped, as an engine frees a dropped request's slot)."""
    counter.enter()
    try:
        body = await _read(receive)
        work = asyncio.ensure_future(_complete(send, body, kind, delay_s))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                task.cancel()
        if work.done() and not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]
    finally:
        counter.leave()


def make_app(*, chunk_delay_s: float = 0.0,
             counter: Concurrency | None = None) -> Callable[[Scope, Receive, Send],
                                                             Awaitable[None]]:
    """The ASGI app (see the module docstring).

    Args:
        chunk_delay_s: pause before each streamed chunk (seconds; 0: none).
        counter: counts the completions in flight (a new one when ``None``); ``GET
            /stats`` answers its snapshot.

    Returns:
        The app.
    """
    seen = counter if counter is not None else Concurrency()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/v1/models":
            await _json(send, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        elif method == "GET" and path in ("/props", "/health"):
            await _json(send, _PROPS if path == "/props" else {"status": "ok"})
        elif method == "GET" and path == "/stats":
            await _json(send, seen.snapshot())
        elif method == "POST" and path == "/tokenize":
            body = await _read(receive)
            words = str(body.get("content", "")).split(" ")
            pieces = [(" " if i else "") + w for i, w in enumerate(words) if w or not i]
            special = 1 if body.get("add_special") else 0
            tokens: list[Any] = ([{"id": 100 + len(p), "piece": p} for p in pieces]
                                 if body.get("with_pieces")
                                 else [1] * special + [100 + len(p) for p in pieces])
            await _json(send, {"tokens": tokens})
        elif method == "POST" and path == "/apply-template":
            await _json(send, {"prompt": _render((await _read(receive)).get("messages")
                                                 or [])})
        elif method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
            await _counted(receive, send, "chat" if path == "/v1/chat/completions" else "text",
                           chunk_delay_s, seen)
        else:
            await _json(send, {"error": {"message": f"no route {method} {path}"}}, 404)

    return app


app = make_app()
"""The app without pacing (what ``tools.bench.overhead`` measures against)."""


def spawn(chunk_delay_ms: float = 0.0,
          timeout_s: float = 30.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m tools.bench.mock_openai`` on a free loopback port; wait until it
    answers ``GET /v1/models``.

    Args:
        chunk_delay_ms: its ``--chunk-delay-ms``.
        timeout_s: how long to wait for it (seconds).

    Returns:
        ``(process, base URL)``; stop it with ``terminate()`` and ``wait()``.

    Raises:
        RuntimeError: it did not answer within ``timeout_s`` (it is stopped).
    """
    import httpx

    from tools.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tools.bench.mock_openai", str(port),
                             "--chunk-delay-ms", str(chunk_delay_ms)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/v1/models", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.terminate()
            proc.wait(timeout=10)
            raise RuntimeError("the mock server did not start")
        time.sleep(0.05)


def stats(url: str) -> dict[str, int]:
    """``GET /stats`` of the mock server at ``url``: ``{"current", "max", "total"}``.

    Raises:
        httpx.HTTPError: it did not answer.
    """
    import httpx

    resp = httpx.get(url + "/stats", timeout=5.0)
    resp.raise_for_status()
    return {k: int(v) for k, v in resp.json().items()}


def main(argv: list[str] | None = None) -> None:
    """Serve :func:`make_app` on ``127.0.0.1:<port>`` (Granian, one process) until SIGTERM.

    Args:
        argv: ``PORT [--chunk-delay-ms MS]`` (MS: the pause before each streamed chunk).
    """
    import argparse

    from granian.constants import Interfaces
    from granian.server.embed import Server

    p = argparse.ArgumentParser(prog="python -m tools.bench.mock_openai")
    p.add_argument("port", type=int)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    args = p.parse_args(argv)
    port = args.port
    app = make_app(chunk_delay_s=args.chunk_delay_ms / 1000.0)

    async def run() -> None:
        import signal

        server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI,
                        log_access=False)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        await server.serve()

    asyncio.run(run())


if __name__ == "__main__":
    main()
