"""Recordings: export and import time per 10,000 frames, and replay throughput from an
imported recording on a server with no engine (REC-7010..REC-7012).

``python -m tools.bench.recordings [--steps 3] [--tokens 3400] [--rounds 3] [--json]``:
two servers in this process (Granian in a thread each, as the pytest plugin runs them),
one with the mock engine answering ``--tokens`` tokens per Step, one with no engine and
an empty database. Each round records a Run of S Steps, exports it, imports the file into
the second server, and replays it there, one Step after the other, reading each stream
raw; the replayed bodies must equal the recorded Steps' read back from their log byte for
byte (a live reader of a recording Step also gets ephemeral ``metrics`` frames). It prints medians
over rounds: the export and the import in ms per 10,000 frames, and the replay in tokens
per second delivered to the client.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time

import httpx
import msgspec

from orchestrator_core.config import mock_config
from orchestratord.pytest_plugin import ServerThread

__all__ = ["RecordingsReport", "main", "measure"]

NDJSON = {"content-type": "application/x-ndjson"}


class RecordingsReport(msgspec.Struct, frozen=True):
    """Medians over rounds.

    Attributes:
        steps / tokens / frames: per round (frames: every durable frame of the Run).
        export_ms_per_10k_frames / import_ms_per_10k_frames: wall time, scaled.
        replay_tokens_per_s: token frames delivered to the client per second of replay.
        byte_identical: every replayed body equals the recorded one.
        engine_requests: requests the no-engine server could make (it has no pool: 0).
    """

    steps: int
    tokens: int
    frames: int
    export_ms_per_10k_frames: float
    import_ms_per_10k_frames: float
    replay_tokens_per_s: float
    byte_identical: bool
    engine_requests: int = 0


def _bodies(http: httpx.Client, run_id: str, steps: int, tokens: int,
            readback: bool = False) -> dict[str, bytes]:
    """Each Step's stream body, by client_token; with ``readback``, read again once every
    Step has finished (the durable frames only: a live reader also gets ``metrics``)."""
    out, ids = {}, {}
    for i in range(steps):
        body = {"type": "llm_call", "client_token": f"bench-{i}",
                "input": {"model": "mock:echo-1", "prompt": f"bench step {i}",
                          "params": {"max_tokens": tokens}}}
        step = http.post(f"/v1/runs/{run_id}/steps", json=body).json()
        ids[f"bench-{i}"] = step["step_id"]
        with http.stream("GET", f"/v1/steps/{step['step_id']}/stream") as s:
            out[f"bench-{i}"] = s.read()
    if readback:
        for token, step_id in ids.items():
            out[token] = http.get(f"/v1/steps/{step_id}/stream").content
    return out


def measure(steps: int, tokens: int, rounds: int) -> RecordingsReport:
    """Run the rounds (see the module docstring) and return the medians."""
    exports, imports, rates, same, frames = [], [], [], True, 0
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        base = mock_config(data_dir=a)
        pool = msgspec.structs.replace(base.pools[0],
                                       options={**base.pools[0].options, "length": tokens})
        recorder = ServerThread(msgspec.structs.replace(base, pools=[pool]))
        player = ServerThread(msgspec.structs.replace(mock_config(data_dir=b), pools=[]))
        try:
            with httpx.Client(base_url=recorder.url, timeout=120) as rec, \
                    httpx.Client(base_url=player.url, timeout=120) as play:
                for r in range(rounds):
                    flow = rec.post("/v1/flows", json={"ast_ir": {"bench": r}}).json()
                    run = rec.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": r}).json()
                    recorded = _bodies(rec, run["run_id"], steps, tokens, readback=True)
                    t0 = time.perf_counter()
                    data = rec.get(f"/v1/runs/{run['run_id']}/recording").content
                    t1 = time.perf_counter()
                    imported = play.post("/v1/recordings", content=data, headers=NDJSON).json()
                    t2 = time.perf_counter()
                    frames = int(msgspec.json.decode(data.splitlines()[-1])["frames"])
                    exports.append((t1 - t0) * 1000 * 10_000 / frames)
                    imports.append((t2 - t1) * 1000 * 10_000 / frames)
                    replay = play.post(f"/v1/flows/{imported['flow_id']}/runs", json={
                        "mode": "replay", "replay_of": imported["run_id"]}).json()
                    t3 = time.perf_counter()
                    replayed = _bodies(play, replay["run_id"], steps, tokens)
                    rates.append(steps * tokens / (time.perf_counter() - t3))
                    same = same and replayed == recorded
        finally:
            recorder.stop()
            player.stop()
    return RecordingsReport(steps=steps, tokens=steps * tokens, frames=frames,
                            export_ms_per_10k_frames=round(statistics.median(exports), 1),
                            import_ms_per_10k_frames=round(statistics.median(imports), 1),
                            replay_tokens_per_s=round(statistics.median(rates)),
                            byte_identical=same)


def main(argv: list[str] | None = None) -> int:
    """Entry point; 0 when every replay was byte-identical."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.recordings",
                                     description=__doc__)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=3400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # Granian's embedded logs: not the report
        report = measure(args.steps, args.tokens, args.rounds)
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        for key, value in msgspec.to_builtins(report).items():
            print(f"{key:>26}: {value}")
    return 0 if report.byte_identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
