"""The reference peer of ``python -m tools.bench.overhead``: LiteLLM's proxy, in its own venv.

LiteLLM is installed by the benchmark itself, never into the project's venv: into
``<repo>/.bench-venv/litellm`` (``uv venv`` and ``uv pip install`` when ``uv`` is on the
PATH, else ``python -m venv`` and pip), pinned to :data:`LITELLM_SPEC`. Release 1.107.0
was compromised and is refused whatever the pin says. When the registry cannot be
reached, or the install fails, the peer is skipped with the reason printed, and the rest
of the benchmark runs.

:class:`LiteLLMProxy` starts ``litellm --config`` on a free loopback port in front of the
OpenAI-compatible mock server (:mod:`tools.bench.mock_openai`), with telemetry and every
callback off, and stops it afterwards.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import time

import httpx

from tools.servers import free_port

__all__ = ["BAD_RELEASES", "LITELLM_SPEC", "LiteLLMProxy", "ensure_litellm", "venv_dir"]

LITELLM_SPEC = "litellm[proxy]==1.106.12"
"""The pinned release: the last one published before the compromised 1.107.0."""

BAD_RELEASES = frozenset({"1.107.0"})
"""Releases never installed (1.107.0 was compromised)."""

_REPO = pathlib.Path(__file__).resolve().parents[2]
_INSTALL_TIMEOUT_S = 900.0


def venv_dir(root: pathlib.Path = _REPO) -> pathlib.Path:
    """Where the peer's venv lives: ``<repo>/.bench-venv/litellm`` (git-ignored)."""
    return root / ".bench-venv" / "litellm"


def _pinned_version(spec: str) -> str | None:
    return spec.split("==", 1)[1].strip() if "==" in spec else None


def _installed(venv: pathlib.Path) -> str | None:
    """The litellm version importable in ``venv`` (None when it is not)."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m;"
                          "print(m.version('litellm'))"], capture_output=True, text=True,
                         check=False, timeout=60)
    return out.stdout.strip() or None if out.returncode == 0 else None


def ensure_litellm(spec: str = LITELLM_SPEC, venv: pathlib.Path | None = None) -> \
        tuple[pathlib.Path | None, str]:
    """Create the peer's venv and install ``spec`` into it, unless it is already there.

    Args:
        spec: the requirement, e.g. ``litellm[proxy]==1.106.12``.
        venv: the venv directory (default :func:`venv_dir`).

    Returns:
        ``(venv, version)`` when LiteLLM is installed; ``(None, reason)`` when the peer
        is skipped (a refused release, no registry, a failed install).
    """
    venv = venv or venv_dir()
    pinned = _pinned_version(spec)
    if pinned in BAD_RELEASES:
        return None, f"refusing {spec}: release {pinned} was compromised"
    have = _installed(venv)
    if have is not None and (pinned is None or have == pinned):
        return venv, have
    uv = shutil.which("uv")
    steps = ([[uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
              [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
               spec]] if uv else
             [[sys.executable, "-m", "venv", str(venv)],
              [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", spec]])
    venv.parent.mkdir(parents=True, exist_ok=True)
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=_INSTALL_TIMEOUT_S,
                                  env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"LiteLLM peer skipped: {' '.join(argv[:3])} failed: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, ("LiteLLM peer skipped: installing it failed (registry "
                          "unreachable?): " + " | ".join(tail))
    have = _installed(venv)
    if have is None:
        return None, "LiteLLM peer skipped: installed, but litellm does not import"
    if have in BAD_RELEASES:
        return None, f"LiteLLM peer skipped: {have} was installed, a compromised release"
    return venv, have


_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {api_base}
      api_key: not-needed
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
  json_logs: false
  request_timeout: 60
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""


class LiteLLMProxy:
    """``litellm --config`` on a free loopback port, in front of ``upstream`` (a context
    manager; ``url`` is its base URL, ``key`` the bearer token it wants).

    Args:
        venv: the venv :func:`ensure_litellm` returned.
        upstream: the OpenAI-compatible server's base URL (without ``/v1``).
        model: the model name the upstream serves (the proxy's name for it too).
        work_dir: where its config and log go.
    """

    def __init__(self, venv: pathlib.Path, upstream: str, model: str,
                 work_dir: pathlib.Path) -> None:
        self.venv = venv
        self.upstream = upstream
        self.model = model
        self.work_dir = work_dir
        self.port = free_port()
        self.key = "sk-" + secrets.token_hex(16)
        """The proxy's master key for this run (it refuses to start without one)."""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the proxy."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiteLLMProxy:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.work_dir / "litellm.yaml"
        cfg.write_text(_CONFIG.format(model=self.model, api_base=self.upstream + "/v1"))
        env = {**os.environ, "LITELLM_MASTER_KEY": self.key,
               "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
               "DISABLE_SCHEMA_UPDATE": "True", "LITELLM_MODE": "PRODUCTION",
               "NO_DOCS": "True"}
        env.pop("DATABASE_URL", None)
        with (self.work_dir / "litellm.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.venv / "bin" / "litellm"), "--config", str(cfg), "--host",
                 "127.0.0.1", "--port", str(self.port), "--num_workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.work_dir)
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited; see {self.work_dir / 'litellm.log'}")
            try:
                if httpx.get(self.url + "/health/liveliness", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"litellm not ready; see {self.work_dir / 'litellm.log'}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
