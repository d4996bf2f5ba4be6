"""The llama.cpp engine worker: one process per replica that streams engine token ids.

``python -m worker_adapters.llamacpp_worker --model PATH --settings JSON --fd N`` loads
the GGUF once per slot (one independent ``llama_cpp.Llama`` context each, the weights
shared through ``mmap``) and serves loopback HTTP on the listening socket it inherits
as file descriptor ``N`` (the pool manager binds it, so there is no port race):

* ``GET /health``: ``{"status": "ok", "slots": n, "busy": k}``.
* ``GET /v1/engine``: what the worker observed of itself: library version, the CPU
  features llama.cpp reports, the context parameters read back from every context, and
  the environment it runs in (PLACE-5004). The pool manager compares it with the pool's
  expected identity before the replica takes traffic.
* ``POST /v1/generate``: one completion. The body is :class:`GenerateRequest`; the answer
  is ``application/x-ndjson``: ``{"prompt_tokens": n}``, then one ``{"id": id, "b":
  base64}`` line per token released (STREAM-2006), then ``{"finish_reason": ...,
  "completion_tokens": n, "withheld": k}``, or ``{"error": ...}`` if generation failed.

Each request runs alone in a free context, from an empty KV cache (``Llama.reset()``
before ``Llama.generate``): no prefix of an earlier request is ever reused, so a prompt
always takes the same evaluation path (PLACE-5003). The sampler chain, the seed handling,
the BOS/EOS rule, the context clamp of ``max_tokens`` and the end-of-generation rule are
those of ``Llama.create_completion`` in llama-cpp-python 0.3.x. Between two tokens the
worker checks whether the client closed the connection and, if so, stops generating: a
cancel is an aborted request.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import http.server
import json
import os
import queue
import select
import socket
import sys
import threading
from collections.abc import Generator
from typing import Any

import msgspec

from worker_adapters.token_bytes import StopFilter

__all__ = ["GenerateRequest", "WorkerLine", "main", "open_llama"]


class GenerateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /v1/generate``: every sampling parameter explicit (PLACE-5003)."""

    prompt: str
    seed: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    max_tokens: int
    stop: list[str] = []
    grammar: str | None = None


class WorkerLine(msgspec.Struct, omit_defaults=True):
    """One NDJSON line of ``POST /v1/generate``: the prompt size, a token (engine ``id``
    and its bytes ``b`` in base64), the finish, or an error (STREAM-2006)."""

    id: int | None = None
    b: str | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    completion_tokens: int | None = None
    withheld: int | None = None
    error: str | None = None


_TYPES = {0: "f32", 1: "f16", 8: "q8_0", 30: "bf16"}
"""ggml KV cache type numbers and their names (only ``f16`` is ever requested)."""
_enc = msgspec.json.Encoder()
_req = msgspec.json.Decoder(GenerateRequest)


def open_llama(model: str, settings: dict[str, Any]) -> Any:
    """A ``llama_cpp.Llama`` context with every setting explicit (PLACE-5004).

    Args:
        model: the GGUF path.
        settings: as :func:`worker_adapters.llamacpp.llamacpp_settings` returns them.
    """
    import llama_cpp

    types = {name: num for num, name in _TYPES.items()}
    return llama_cpp.Llama(
        model_path=model, n_ctx=settings["n_ctx"], n_batch=settings["n_batch"],
        n_ubatch=settings["n_ubatch"], n_threads=settings["n_threads"],
        n_threads_batch=settings["n_threads_batch"], flash_attn=settings["flash_attn"],
        type_k=types[settings["type_k"]], type_v=types[settings["type_v"]],
        last_n_tokens_size=settings["last_n_tokens_size"],
        logits_all=settings["logits_all"], n_gpu_layers=0, use_mmap=True,
        use_mlock=False, numa=False, embedding=False, verbose=False)


class _Slot:
    """One ``Llama`` context and what it needs to turn ids into bytes."""

    def __init__(self, model: str, settings: dict[str, Any]) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = open_llama(model, settings)
        self.vocab = self.llm._model.vocab
        self._buf = ctypes.create_string_buffer(64)
        self._grammars: dict[str, Any] = {}

    def observed(self) -> dict[str, Any]:
        """Context parameters read back from llama.cpp itself."""
        lib, llm = self.lib, self.llm
        ctx = llm.ctx
        return {"n_ctx": lib.llama_n_ctx(ctx), "n_batch": lib.llama_n_batch(ctx),
                "n_ubatch": lib.llama_n_ubatch(ctx), "n_threads": lib.llama_n_threads(ctx),
                "n_threads_batch": lib.llama_n_threads_batch(ctx),
                "flash_attn": llm.context_params.flash_attn_type
                == lib.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                "type_k": _TYPES.get(int(llm.context_params.type_k), "other"),
                "type_v": _TYPES.get(int(llm.context_params.type_v), "other"),
                "last_n_tokens_size": llm.last_n_tokens_size,
                "logits_all": bool(llm._logits_all)}

    def piece(self, token: int) -> bytes:
        """The token's exact bytes (special tokens render as nothing, as in completions)."""
        n = self.lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf), 0,
                                          False)
        if n < 0:
            self._buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, self._buf, len(self._buf),
                                              0, False)
        return self._buf.raw[:n]

    def prompt_tokens(self, prompt: str) -> list[int]:
        """BOS (or CLS), the prompt with special tokens parsed, EOS (or SEP) where the
        model asks for it: ``Llama._create_completion``'s rule."""
        model = self.llm._model
        bos = model.token_cls() if model.token_cls() != -1 else model.token_bos()
        head = [bos] if model.add_bos_token() and bos != -1 else []
        sep = model.token_sep()
        tail = [] if (not model.add_eos_token() and sep == -1) else [
            sep if sep != -1 else model.token_eos()]
        body = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) \
            if prompt else []
        return head + body + tail

    def grammar(self, text: str) -> Any:
        """A ``LlamaGrammar`` for this GBNF text (kept for the next request)."""
        if text not in self._grammars:
            if len(self._grammars) > 64:
                self._grammars.clear()
            from llama_cpp.llama_grammar import LlamaGrammar

            self._grammars[text] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[text]

    def generate(self, req: GenerateRequest, aborted: Any) -> Generator[WorkerLine, None, None]:
        """Run one completion from an empty cache; yield the lines of the answer.

        ``aborted()`` is polled between tokens; True ends generation with no finish line.

        Raises:
            ValueError: the prompt does not fit the context.
        """
        llm = self.llm
        if req.seed & 0xFFFFFFFF == 0xFFFFFFFF:
            raise ValueError("a seed whose low 32 bits are all ones is a random seed")
        tokens = self.prompt_tokens(req.prompt)
        n_ctx = llm.n_ctx()
        if len(tokens) >= n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens exceeds the context of {n_ctx}")
        max_tokens = req.max_tokens if req.max_tokens > 0 else n_ctx - len(tokens)
        if max_tokens + len(tokens) >= n_ctx:
            max_tokens = n_ctx - len(tokens)
        grammar = self.grammar(req.grammar) if req.grammar is not None else None
        yield WorkerLine(prompt_tokens=len(tokens))
        # n_tokens = 0: generate() evaluates the whole prompt, nothing is reused
        llm.reset()
        llm.set_seed(req.seed)
        stops = StopFilter(req.stop)
        sampled = 0
        finish = "length"
        gen = llm.generate(tokens, top_k=req.top_k, top_p=req.top_p, min_p=req.min_p,
                           typical_p=1.0, temp=req.temperature,
                           repeat_penalty=req.repeat_penalty, frequency_penalty=0.0,
                           presence_penalty=0.0, tfs_z=1.0, mirostat_mode=0,
                           grammar=grammar)
        try:
            for token in gen:
                if self.lib.llama_vocab_is_eog(self.vocab, token):
                    finish = "stop"
                    break
                sampled += 1
                for tid, data in stops.push(token, self.piece(token)):
                    yield WorkerLine(id=tid, b=base64.b64encode(data).decode("ascii"))
                if stops.matched:
                    finish = "stop"
                    break
                if sampled >= max_tokens:
                    break
                if aborted():
                    return
        finally:
            gen.close()
        for tid, data in stops.flush():
            yield WorkerLine(id=tid, b=base64.b64encode(data).decode("ascii"))
        yield WorkerLine(finish_reason=finish, completion_tokens=sampled, withheld=stops.withheld)


class _Engine:
    """The worker's contexts and their free list."""

    def __init__(self, model: str, settings: dict[str, Any], slots: int) -> None:
        self.settings = settings
        self.slots = [_Slot(model, settings) for _ in range(slots)]
        self.free: queue.Queue[_Slot] = queue.Queue()
        for slot in self.slots:
            self.free.put(slot)

    def report(self) -> dict[str, Any]:
        """``GET /v1/engine``: the identity the worker observed."""
        lib = self.slots[0].lib
        return {"library": "llama-cpp-python", "version": lib.__version__,
                "library_path": os.path.dirname(str(lib.__file__)),
                "system_info": lib.llama_print_system_info().decode("utf-8", "replace").strip(),
                "contexts": [s.observed() for s in self.slots],
                "env": dict(sorted(os.environ.items())), "pid": os.getpid()}


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed its end (a readable socket with nothing to read)."""
    try:
        readable, _w, _x = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small write per token: never wait for an ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        engine = self.server.engine
        if self.path == "/health":
            free = engine.free.qsize()
            self._json(200, {"status": "ok", "slots": len(engine.slots),
                             "busy": len(engine.slots) - free})
        elif self.path == "/v1/engine":
            self._json(200, engine.report())
        else:
            self._json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/v1/generate":
            self._json(404, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = _req.decode(self.rfile.read(length))
        except msgspec.DecodeError as exc:
            self._json(400, {"error": f"bad request: {exc}"})
            return
        slot = self.server.engine.free.get()
        try:
            self._generate(slot, req)
        finally:
            self.server.engine.free.put(slot)

    def _generate(self, slot: _Slot, req: GenerateRequest) -> None:
        lines = slot.generate(req, lambda: _client_gone(self.connection))
        try:
            first = next(lines)
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._chunk(_enc.encode(first) + b"\n")
            try:
                for line in lines:
                    self._chunk(_enc.encode(line) + b"\n")
            except Exception as exc:  # report the engine's failure in the stream
                self._chunk(_enc.encode(WorkerLine(error=f"{type(exc).__name__}: {exc}")) + b"\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away: the request is aborted
            self.close_connection = True
            lines.close()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sock: socket.socket, engine: _Engine) -> None:
        super().__init__(sock.getsockname(), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.engine = engine


def main(argv: list[str] | None = None) -> int:
    """Load the contexts, then serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m worker_adapters.llamacpp_worker")
    p.add_argument("--model", required=True)
    p.add_argument("--settings", required=True, help="JSON object of engine settings")
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    args = p.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    engine = _Engine(args.model, json.loads(args.settings), args.slots)
    server = _Server(sock, engine)
    print(f"llamacpp_worker ready: pid {os.getpid()}, {args.slots} slot(s)", file=sys.stderr,
          flush=True)
    threading.current_thread().name = "serve"
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":  # pragma: no cover - the replica process entry point
    raise SystemExit(main())
