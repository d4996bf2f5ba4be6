"""Slow and many SSE readers on a real Granian server process (STREAM-2000, STREAM-2003).

Litestar's TestClient buffers whole responses, so these tests speak TCP to the app
served by Granian in a child process, as ``orchestratord serve`` runs it. The child's
mock engine generates exactly ``max_tokens`` tokens per Step (the ``mock`` pool config
has no ``length`` option), so a Step of any length can be asked for.

Loopback sockets hold megabytes: the server's send buffer autotunes up to
``net.ipv4.tcp_wmem`` max (4 MiB by default). A 1,000-token stream (about 70 KB) fits
in it whole, so the server itself only feels a slow reader on a Step several times
that size; the drop test sizes its Step from that limit.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec

from orchestrator_core.config import ServerConfig, mock_config
from test_harness.support import llm_step, parse_sse
from tools.servers import stop_server

REPO = pathlib.Path(__file__).resolve().parents[2]
FRAME_PAUSE_S = 0.05
"""The slow reader's time per frame (s)."""
RSS_GROWTH_LIMIT_KB = 5 * 1024
READERS = 500
METRICS_EVERY = 16
"""The executor publishes one ephemeral ``metrics`` frame every this many tokens."""
_SUBSCRIBERS_RE = re.compile(r"^orchestrator_sse_subscribers ([0-9.e+]+)$", re.M)
_DROPPED_RE = re.compile(
    r'^orchestrator_sse_dropped_frames_total\{frame_type="metrics"\} ([0-9.e+]+)$', re.M)


# -- the server process ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(data_dir: pathlib.Path, tokens_per_s: float) -> ServerConfig:
    """One mock replica with one slot at ``tokens_per_s`` and a context of 1M tokens."""
    cfg = mock_config(data_dir=str(data_dir), port=_free_port(), replicas=1,
                      slots_per_replica=1, mock_options={"tokens_per_s": tokens_per_s})
    pool = cfg.pools[0]
    model = msgspec.structs.replace(pool.models[0], context_tokens=1_000_000)
    return msgspec.structs.replace(cfg, pools=[msgspec.structs.replace(pool, models=[model])])


@contextmanager
def long_step_server(data_dir: pathlib.Path, *, tokens_per_s: float) -> \
        Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A Granian server process whose Steps are exactly ``max_tokens`` tokens long."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = _config(data_dir, tokens_per_s)
    cfg_path = data_dir / "config.json"
    cfg_path.write_bytes(msgspec.json.encode(config))
    code = "import sys; from tools.bench.streams import serve; serve(sys.argv[1])"
    with open(data_dir / "server.log", "ab") as log:  # the child keeps a dup
        proc = subprocess.Popen([sys.executable, "-c", code, str(cfg_path)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ})
    url = f"http://{config.host}:{config.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"server exited; see {data_dir}/server.log"
            assert time.monotonic() < deadline, f"server not ready; see {data_dir}/server.log"
            try:
                if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        yield proc, url
    finally:
        stop_server(proc)


# -- helpers ---------------------------------------------------------------------------


def _new_run(http: httpx.Client) -> str:
    """Create a Flow and a record Run; return the Run's id."""
    flow = http.post("/v1/flows", json={"ast_ir": {"test": "backpressure"}}).json()
    run_id: str = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()["run_id"]
    return run_id


def _submit(http: httpx.Client, run_id: str, token: str, tokens: int) -> str:
    """Submit a ``tokens``-long llm_call Step; return its id."""
    resp = http.post(f"/v1/runs/{run_id}/steps",
                     json=llm_step(token, "a long story", max_tokens=tokens))
    assert resp.status_code == 201, resp.text
    step_id: str = resp.json()["step_id"]
    return step_id


def _rss_kb(pid: int) -> int:
    """Resident set size of a process (KiB), from ``/proc/<pid>/status``."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _wait_status(http: httpx.Client, step_id: str, status: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while http.get(f"/v1/steps/{step_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"step {step_id} never became {status}"
        time.sleep(0.05)


def _durable(body: bytes) -> bytes:
    """The frames of an SSE body that carry an ``id:`` (ephemeral ones and comments go)."""
    return b"".join(block + b"\n\n" for block in body.split(b"\n\n")
                    if block.startswith(b"id: "))


def _tcp_wmem_max() -> int:
    """Largest send buffer Linux autotunes a TCP socket to (bytes)."""
    return int(pathlib.Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


async def _raw_stream(host: str, port: int, path: str) -> bytes:
    """GET an SSE stream over a plain socket (``Connection: close``); return its body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    chunks: list[bytes] = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(chunks)
        chunks.append(rest[:size])
        rest = rest[size + 2:]


def _expect_complete(frames: list[dict[str, Any]], tokens: int) -> None:
    """started, tokens 0..n-1, end; ids 0..n+1; the token texts make the output."""
    assert [f["event"] for f in frames] == ["started"] + ["token"] * tokens + ["end"]
    assert [f["id"] for f in frames] == list(range(tokens + 2))
    data = [json.loads(f["data"]) for f in frames[1:-1]]
    assert [d["i"] for d in data] == list(range(tokens))
    end = json.loads(frames[-1]["data"])
    assert "".join(d["t"] for d in data) == end["output"]["text"]
    assert end["provenance"]["tokens_out"] == tokens


# -- the tests -------------------------------------------------------------------------


class TestSlowReader:
    """A reader that lags behind costs the server a cursor, never a lost frame."""

    def test_a_reader_taking_50_ms_per_frame_gets_every_token_and_rss_stays_flat(
            self, tmp_path: pathlib.Path) -> None:
        """Slow by design, about 55 s: one frame per 50 ms of a 1,000-token Step arrives
        complete and in order while the server's RSS does not grow."""
        tokens = 1000
        with long_step_server(tmp_path / "srv", tokens_per_s=2000) as (proc, url), \
                httpx.Client(base_url=url, timeout=30.0) as http:
            step_id = _submit(http, _new_run(http), "bp-1", tokens)
            received: list[bytes] = []
            rss: list[int] = []
            status_when_lagging = ""
            pending = b""
            with http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
                for chunk in s.iter_bytes():
                    pending += chunk
                    *blocks, pending = pending.split(b"\n\n")
                    for block in blocks:
                        time.sleep(FRAME_PAUSE_S)
                        received.append(block + b"\n\n")
                        if len(received) == 100:  # the engine finished long ago
                            status_when_lagging = http.get(f"/v1/steps/{step_id}").json()[
                                "status"]
                        if len(received) % 100 == 0:
                            rss.append(_rss_kb(proc.pid))
        frames = [f for f in parse_sse(b"".join(received)) if f["id"] is not None]
        _expect_complete(frames, tokens)
        assert pending == b""
        assert status_when_lagging == "succeeded"
        assert len(rss) >= 10
        assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_KB, f"RSS samples (KiB): {rss}"


class TestEphemeralDrops:
    """A reader too slow for the engine loses ``metrics`` frames, counted, never tokens."""

    def test_a_stalled_reader_loses_metrics_frames_and_they_are_counted(
            self, tmp_path: pathlib.Path) -> None:
        """A reader that stalls while a fast engine streams more than the socket buffers
        hold gets every token, and the server counts the ``metrics`` frames it dropped."""
        tokens = max(100_000, 2 * _tcp_wmem_max() // 70)  # a token frame is ~70 bytes
        with long_step_server(tmp_path / "srv", tokens_per_s=0) as (_proc, url), \
                httpx.Client(base_url=url, timeout=60.0) as http:
            step_id = _submit(http, _new_run(http), "bp-1", tokens)
            with http.stream("GET", f"/v1/steps/{step_id}/stream") as s:
                _wait_status(http, step_id, "succeeded", timeout_s=60)
                body = s.read()
            exposition = http.get("/metrics").text
        frames = parse_sse(body)
        _expect_complete([f for f in frames if f["id"] is not None], tokens)
        match = _DROPPED_RE.search(exposition)
        dropped = int(float(match.group(1))) if match else 0
        delivered = sum(1 for f in frames if f["event"] == "metrics")
        assert dropped > 0
        assert delivered + dropped <= tokens // METRICS_EVERY


class TestManyReaders:
    """Readers of one Step share its log: they all get the same bytes."""

    def test_500_concurrent_readers_of_one_step_receive_identical_durable_bytes(
            self, tmp_path: pathlib.Path) -> None:
        """500 sockets attached to one Step before its first frame each receive the
        same durable frames, byte for byte, as a read of the finished Step."""
        tokens = 200
        with long_step_server(tmp_path / "srv", tokens_per_s=100) as (_proc, url), \
                httpx.Client(base_url=url, timeout=30.0) as http:
            run_id = _new_run(http)
            blocker = _submit(http, run_id, "bp-blocker", 100_000)  # holds the one slot
            _wait_status(http, blocker, "running", timeout_s=10)
            step_id = _submit(http, run_id, "bp-1", tokens)
            host, port = url.removeprefix("http://").split(":")
            path = f"/v1/steps/{step_id}/stream"

            async def release_when_all_attached() -> tuple[int, str]:
                """Wait for every reader, note the Step's status, then free its slot."""
                async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
                    while True:
                        m = _SUBSCRIBERS_RE.search((await client.get("/metrics")).text)
                        attached = int(float(m.group(1))) if m else 0
                        if attached >= READERS:
                            status = (await client.get(f"/v1/steps/{step_id}")).json()
                            await client.post(f"/v1/steps/{blocker}/cancel")
                            return attached, status["status"]
                        await asyncio.sleep(0.05)

            async def readers() -> tuple[list[bytes], tuple[int, str]]:
                async with asyncio.timeout(120):
                    release = asyncio.create_task(release_when_all_attached())
                    bodies = await asyncio.gather(
                        *(_raw_stream(host, int(port), path) for _ in range(READERS)))
                    return bodies, await release

            bodies, (attached, status_when_attached) = asyncio.run(readers())
            with http.stream("GET", path) as s:
                reread = s.read()
        assert (attached, status_when_attached) == (READERS, "queued")
        assert len(bodies) == READERS
        assert {_durable(b) for b in bodies} == {reread}
        _expect_complete(parse_sse(reread), tokens)
