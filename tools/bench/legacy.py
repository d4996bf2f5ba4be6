"""The replica the llama.cpp worker replaced, kept for ``python -m tools.bench`` only.

``python -m llama_cpp.server`` with the settings the default pool used to have: one
thread, ``--interrupt_requests False``, the OpenAI-compatible ``/v1/completions`` stream,
and, before each completion, the one-token prefix-reset request the orchestrator sent so
that no prompt reused the previous one's cache. Nothing in the server uses it.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import httpx

__all__ = ["PREFIX_BREAKER", "LegacyServer"]

PREFIX_BREAKER = {"prompt": "<|endoftext|>", "max_tokens": 1, "temperature": 0.0, "seed": 0,
                  "stream": False}
"""The body of the old per-step prefix reset (SmolLM2's end-of-text token as a prompt)."""


class LegacyServer:
    """One ``llama_cpp.server`` child on a free loopback port (a context manager).

    Args:
        model_path: the GGUF file.
        log_path: where its output goes.
    """

    def __init__(self, model_path: pathlib.Path, log_path: pathlib.Path) -> None:
        self.model_path = model_path
        self.log_path = log_path
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LegacyServer:
        argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path),
                "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "2048",
                "--n_threads", "1", "--n_threads_batch", "1", "--n_batch", "512",
                "--interrupt_requests", "False", "--verbose", "False"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/v1/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"llama_cpp.server not ready; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
