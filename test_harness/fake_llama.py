"""Fake ``llama-server``s on loopback ports for the provisioning tests (PLACE-5100):
each answers as llama.cpp's server README documents it, with its own ``build_info`` and
``model_path``, and can hold its completions open until the test releases them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any, ClassVar

from test_harness.support import loopback_http_server

__all__ = ["Engine", "EngineFactory", "engine_servers"]


class Engine(BaseHTTPRequestHandler):
    """A ``llama-server`` as its README documents it, enough for one pool: ``/v1/models``,
    ``/props`` (its ``build_info`` and ``model_path`` set per server), ``/tokenize`` and
    a streamed ``/v1/completions`` that holds its last chunk while ``gate`` is clear."""

    build_info: ClassVar[str] = "b1-fake"
    model_path: ClassVar[str] = "/models/fake.gguf"
    gate: ClassVar[threading.Event | None] = None
    completions: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        """``/v1/models`` and ``/props``."""
        if self.path == "/v1/models":
            self._json({"object": "list", "data": [{"id": "fake.gguf"}]})
        else:
            self._json({"default_generation_settings": {"n_ctx": 4096, "params": {}},
                        "total_slots": 1, "model_path": self.model_path,
                        "chat_template": "", "build_info": self.build_info})

    def do_POST(self) -> None:
        """``/tokenize`` (three tokens) and ``/v1/completions`` (`` hi``, then ``stop``)."""
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/tokenize":
            self._json({"tokens": [1, 2, 3]})
            return
        type(self).completions.append(self.path)
        first = {"choices": [{"text": " hi", "index": 0, "finish_reason": None,
                              "logprobs": {"content": [{"id": 7, "token": " hi",
                                                        "bytes": [32, 104, 105],
                                                        "logprob": 0.0,
                                                        "top_logprobs": []}]}}]}
        last = {"choices": [{"text": "", "index": 0, "finish_reason": "stop",
                             "logprobs": None}]}
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        self.wfile.flush()
        if self.gate is not None:
            self.gate.wait(10)
        self.wfile.write(b"data: " + json.dumps(last).encode() + b"\n\ndata: [DONE]\n\n")


EngineFactory = Any
"""``start(**attributes) -> (url, handler class)``."""


@contextmanager
def engine_servers() -> Iterator[EngineFactory]:
    """A factory of fake llama-servers: ``start(**attributes)`` starts one on a free
    loopback port with those class attributes and returns ``(url, handler class)``;
    every one is stopped when the block ends."""
    with ExitStack() as stack:

        def start(**attributes: Any) -> tuple[str, type[Engine]]:
            handler = type("Engine", (Engine,), {"completions": [], **attributes})
            return stack.enter_context(loopback_http_server(handler)), handler

        yield start
