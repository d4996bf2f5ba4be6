"""The server a hostile fuzz runs against, and the ``/health`` probe that watches it.

:class:`LiveServer` is a mock-engine ``orchestratord serve`` process (Granian, loopback)
that can be restarted on the same data directory: a hostile input that stalls the event
loop (a catastrophic pattern on a backtracking engine) must not hide every later case, so
the fuzz kills the stalled process and starts a new one. The Flows, Runs and Steps it
seeded survive in the SQLite store, so their ids stay valid across restarts.

:class:`HealthProbe` polls ``GET /health`` every 10 ms in a thread for the whole run: a
request that blocks the event loop shows up there as a slow answer, even when the request
that caused it was answered quickly and left the work to a background task.
"""

from __future__ import annotations

import pathlib
import subprocess
import threading
import time
from dataclasses import dataclass, field

import httpx
import msgspec

from orchestrator_core.config import mock_config
from tools.servers import start_server, stop_server

__all__ = ["HealthProbe", "LiveServer", "Poll"]


class LiveServer:
    """A restartable mock-engine server process on loopback.

    Args:
        data: its data directory (store, config file, ``server.log``).

    Tool and file-system breakers never open (``breaker_failures`` is huge): hostile
    cases fail executors on purpose, and an open breaker would keep later cases from
    reaching the domain code.
    """

    def __init__(self, data: pathlib.Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.log = data / "server.log"
        self.config = data / "config.json"
        self.config.write_bytes(msgspec.json.encode(
            mock_config(data_dir=str(data), breaker_failures=1_000_000)))
        self.restarts = 0
        self.proc, self.url = self._start()

    def _start(self) -> tuple[subprocess.Popen[bytes], str]:
        return start_server(data_dir=str(self.data), extra=["--config", str(self.config)])

    def alive(self, timeout_s: float = 2.0) -> bool:
        """Whether the process runs and answers ``/health`` within ``timeout_s``."""
        if self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.url}/health", timeout=timeout_s).status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self) -> None:
        """Kill this process (it may be stuck in C code, deaf to SIGTERM) and start anew."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc, self.url = self._start()
        self.restarts += 1

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a few seconds."""
        if self.proc.poll() is None:
            stop_server(self.proc, timeout_s=5.0)


@dataclass(frozen=True)
class Poll:
    """One ``/health`` poll: its latency (s; the timeout when it failed) and the case
    that was in flight."""

    latency_s: float
    ok: bool
    during: str


@dataclass
class HealthProbe:
    """Polls ``GET /health`` of ``server`` every ``period_s`` until :meth:`stop`.

    Set :attr:`during` to say which case is in flight; :attr:`paused` while the server
    restarts (those polls are not counted).
    """

    server: LiveServer
    period_s: float = 0.01
    timeout_s: float = 2.0
    during: str = "-"
    paused: bool = False
    polls: list[Poll] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                if self.paused:
                    time.sleep(self.period_s)
                    continue
                url, during = f"{self.server.url}/health", self.during
                t0 = time.perf_counter()
                try:
                    ok = http.get(url).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latency = time.perf_counter() - t0
                if not self.paused and url == f"{self.server.url}/health":
                    self.polls.append(Poll(latency, ok, during))
                time.sleep(self.period_s)

    def summary(self) -> tuple[int, float, float]:
        """``(polls, max latency s, p99 latency s)``."""
        latencies = sorted(p.latency_s for p in self.polls)
        if not latencies:
            return 0, 0.0, 0.0
        return len(latencies), latencies[-1], latencies[min(len(latencies) - 1,
                                                            int(len(latencies) * 0.99))]
