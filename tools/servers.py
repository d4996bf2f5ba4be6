"""Start and stop ``orchestratord serve`` as a separate process, for tests and tools.

The demo (:mod:`tools.demo`), the benchmarks (``tools/bench``), the crash loop
(:mod:`tools.crash_loop`) and the test suites that need a real Granian server share these
helpers. They live outside the server package on purpose: ``orchestratord`` serves, and
never spawns or waits for a server of its own, nor imports ``tools`` or ``test_harness``
(PLACE-5006, checked by ``test_harness/unit/test_layering.py``).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

__all__ = ["READY_TIMEOUT_S", "free_port", "start_server", "stop_server"]

READY_TIMEOUT_S = 180.0
"""How long :func:`start_server` waits for ``/ready`` (s): a real engine pool loads its
model first, and a cold llama.cpp start on a busy 2-core machine takes a while."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it).

    Returns:
        The port number. Another process may take it before the caller binds it;
        :func:`start_server` then fails, and a caller that cares tries again.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(*, mock: bool = False, data_dir: str | None = None,
                 extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m orchestratord serve`` on a free loopback port; wait for ``/ready``.

    The child's stdout and stderr go to ``<data_dir>/server.log``.

    Args:
        mock: serve the seeded mock engine (``--mock``) instead of the default pool.
        data_dir: the server's data directory (default: a new temporary directory).
        extra: more ``serve`` arguments, e.g. ``["--config", path]``.

    Returns:
        ``(process, base_url)``, the URL as ``http://127.0.0.1:<port>``.

    Raises:
        RuntimeError: the process exited, or ``/ready`` did not answer 200 within
            :data:`READY_TIMEOUT_S` (the process is then killed).
    """
    port = free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="orchestratord-")
    argv = [sys.executable, "-m", "orchestratord", "serve", "--port", str(port),
            "--data-dir", data_dir, *(["--mock"] if mock else []), *(extra or [])]
    with open(pathlib.Path(data_dir) / "server.log", "ab") as log:  # the child keeps a dup
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; "
                               f"see {data_dir}/server.log")
        try:
            if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s; "
                       f"see {data_dir}/server.log")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM the server and wait; SIGKILL it after ``timeout_s``.

    Args:
        proc: a process from :func:`start_server`.
        timeout_s: seconds to wait for a clean exit.

    Returns:
        Its exit code (``0`` after a clean shutdown, ``-9`` after a SIGKILL).
    """
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
