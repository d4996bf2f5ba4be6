"""Slot accounting of one shared remote replica across three ``orchestratord serve --store
DSN`` processes (PG-9107).

The replica is an OpenAI-compatible mock server that counts the completions it serves at
once (:mod:`test_harness.integration.counting_openai`); each process's pool has it as its
one replica with 2 slots.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

import httpx
import msgspec
import pytest

from orchestrator_core.config import ModelConfig, PoolConfig, mock_config
from test_harness import pg_support
from tools import pg_cluster
from tools.bench.mock_openai import MODEL
from tools.servers import free_port, start_server, stop_server

pytestmark = pytest.mark.sqlite_only  # starts its own cluster and servers

SLOTS = 2


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[str, list[str]]]:
    """``(replica_url, [orchestratord base URL] * 3)``."""
    pg_support.require_binaries()
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    replica = subprocess.Popen([sys.executable, "-m", "test_harness.integration.counting_openai",
                                str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = pathlib.Path(tempfile.mkdtemp(prefix="orch-pgs-"))
    db = pathlib.Path(tempfile.mkdtemp(prefix="orch-pgs-db-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(100):
            try:
                if httpx.get(upstream + "/v1/models", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        dsn = pg_cluster.start_cluster(db)
        pool = PoolConfig(pool_id="http-0", engine="openai_http", replicas=1,
                          models=[ModelConfig(id=MODEL, context_tokens=4096)],
                          slots_per_replica=SLOTS, urls=[upstream],
                          # batch-invariant: a record Step may share the replica, so each
                          # process really offers all its slots (PLACE-5005)
                          options={"dialect": "llama-server", "batch_invariant": True})
        cfg = msgspec.structs.replace(mock_config(), pools=[pool])
        path = base / "config.json"
        path.write_bytes(msgspec.json.encode(cfg))
        urls = []
        for i in range(3):
            data = base / f"srv{i}"
            data.mkdir()
            proc, url = start_server(data_dir=str(data), extra=[
                "--config", str(path), "--store", dsn, "--store-schema", "slots_e2e"])
            procs.append(proc)
            urls.append(url)
        yield upstream, urls
    finally:
        for proc in procs:
            stop_server(proc)
        replica.terminate()
        replica.wait()
        pg_cluster.stop_cluster(db)


def test_no_replica_gets_more_concurrent_requests_than_its_slots(
        setup: tuple[str, list[str]]) -> None:
    """[PG-9107] Twelve concurrent Steps through three processes, each allowing the shared
    replica its 2 slots: the replica serves exactly 2 completions at once at most (the
    slots are contended, and never overcommitted), and serves all twelve."""
    upstream, urls = setup
    with httpx.Client(base_url=urls[0], timeout=30.0) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"slots": True}}).json()
        run_id = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()[
            "run_id"]
    ends: list[str] = []
    gate = threading.Barrier(12)

    def step(i: int) -> None:
        body = {"type": "llm_call", "client_token": f"slot-{i}",
                "input": {"model": MODEL, "prompt": f"slot {i}", "params": {"max_tokens": 8}}}
        with httpx.Client(base_url=urls[i % 3], timeout=120.0) as http:
            gate.wait()
            resp = http.post(f"/v1/runs/{run_id}/steps", json=body)
            with http.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
                raw = b"".join(s.iter_bytes()).decode()
        ends.append("end" if "event: end" in raw else raw[-300:])

    threads = [threading.Thread(target=step, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = httpx.get(upstream + "/stats", timeout=5.0).json()
    assert (ends, counts["max"], counts["total"]) == (["end"] * 12, SLOTS, 12)
