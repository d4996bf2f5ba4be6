"""The main job: record a real three-step flow, replay it, strict-replay it, compare.

The demo is the interpreter. It starts ``orchestratord serve`` (default config: one CPU
pool running llama.cpp on SmolLM2-135M-Instruct) unless ``--url`` is given, posts the
Flow, and runs it three times:

1. ``record``: every llm_call runs on the engine;
2. ``replay``: the recorded frames are served, with zero engine requests;
3. ``strict_replay``: inference runs again on the recorded replica and every token is
   checked against the recording.

Each later prompt is built from the earlier steps' outputs, as an interpreter would
feed them. The report says whether the token streams (index, text bytes, token id) are
byte-identical across the three modes, with step/token counts and the time each took.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio
import httpx

from contracts.errors import OrchestratorError
from orchestratord.client import OrchestratorClient, StepResult

__all__ = ["DEMO_FLOW", "run_demo", "run_flow_modes"]

DEMO_FLOW: dict[str, Any] = {
    "version": 1,
    "name": "summarise-keywords-title",
    "steps": [
        {"id": "summary", "op": "llm_call", "inputs": ["document"]},
        {"id": "keywords", "op": "llm_call", "inputs": ["summary"], "output": "json"},
        {"id": "title", "op": "llm_call", "inputs": ["summary", "keywords"]},
    ],
}
_SYSTEM = "You are a precise technical writer. Answer briefly."


def _default_file() -> pathlib.Path:
    for candidate in (pathlib.Path("specs/20_stream_and_replay.md"), pathlib.Path("README.md")):
        if candidate.is_file():
            return candidate
    return pathlib.Path(__file__)


def _step_body(step: str, model: str, outputs: dict[str, str], document: str) -> dict[str, Any]:
    """The llm_call submission of one flow step; prompts use earlier outputs."""
    if step == "summary":
        user = ("Summarise the following document in two or three sentences.\n\n"
                f"{document}")
        params = {"temperature": 0.0, "max_tokens": 96}
    elif step == "keywords":
        user = ("Extract exactly three keywords from this summary. Answer with a JSON "
                f"array of three strings and nothing else.\n\nSummary: {outputs['summary']}")
        params = {"temperature": 0.0, "max_tokens": 40}
    else:
        user = ("Write a one-line title of at most ten words for a document with this "
                f"summary and these keywords.\n\nSummary: {outputs['summary']}\n"
                f"Keywords: {outputs['keywords']}")
        params = {"temperature": 0.8, "max_tokens": 24}
    return {
        "type": "llm_call", "client_token": f"demo-{step}",
        "input": {"model": model, "params": params,
                  "messages": [{"role": "system", "content": _SYSTEM},
                               {"role": "user", "content": user}]},
    }


async def _engine_requests(client: OrchestratorClient) -> int:
    text = (await client._http.get("/metrics")).text
    return sum(int(float(m)) for m in re.findall(
        r'^orchestrator_engine_requests_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))


async def _run_mode(client: OrchestratorClient, flow_id: str, model: str, document: str,
                    mode: str, seed: int, replay_of: str | None) -> dict[str, Any]:
    run = await client.create_run(flow_id, mode=mode, seed=seed,
                                  **({"replay_of": replay_of} if replay_of else {}))
    before = await _engine_requests(client)
    outputs: dict[str, str] = {}
    results: list[StepResult] = []
    t0 = time.perf_counter()
    for spec in DEMO_FLOW["steps"]:
        res = await client.run_step(run.run_id, _step_body(spec["id"], model, outputs, document))
        if res.terminal.event != "end":
            raise RuntimeError(f"{mode} step {spec['id']} ended with {res.terminal.data}")
        outputs[spec["id"]] = res.text.strip()
        results.append(res)
    wall_ms = (time.perf_counter() - t0) * 1000
    return {
        "run_id": run.run_id, "mode": mode, "steps": len(results),
        "tokens": sum(len(r.tokens) for r in results), "wall_ms": round(wall_ms, 1),
        "engine_requests": await _engine_requests(client) - before,
        "token_stream": [[f.data for f in r.tokens] for r in results],
        "outputs": outputs,
        "provenance": [r.terminal.json()["provenance"] for r in results],
    }


async def run_flow_modes(client: OrchestratorClient, document: str,
                         seed: int = 20261121) -> dict[str, Any]:
    """Record, replay and strict_replay the demo flow; return the comparison report."""
    caps = await client.capabilities()
    model = caps.models[0].id
    flow = await client.create_flow(DEMO_FLOW, config={"model": model})
    rec = await _run_mode(client, flow.flow_id, model, document, "record", seed, None)
    rep = await _run_mode(client, flow.flow_id, model, document, "replay", seed, rec["run_id"])
    strict = await _run_mode(client, flow.flow_id, model, document, "strict_replay", seed,
                             rec["run_id"])
    same_replay = rep["token_stream"] == rec["token_stream"]
    same_strict = strict["token_stream"] == rec["token_stream"]
    modes = []
    for r in (rec, rep, strict):
        modes.append({k: r[k] for k in ("mode", "run_id", "steps", "tokens", "wall_ms",
                                        "engine_requests")})
    return {
        "flow_id": flow.flow_id, "flow_hash": flow.hash, "model": model, "seed": seed,
        "modes": modes,
        "replay_byte_identical": same_replay,
        "strict_replay_byte_identical": same_strict,
        "replay_vs_record_time": round(rep["wall_ms"] / rec["wall_ms"], 4),
        "outputs": rec["outputs"],
        "engine": {k: rec["provenance"][0][k] for k in
                   ("engine", "engine_version", "model_hash", "replica_id", "engine_build")},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(*, mock: bool = False, data_dir: str | None = None,
                 extra: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``orchestratord serve`` on a free loopback port; wait until ``/ready``.

    Returns:
        ``(process, base_url)``.
    """
    port = _free_port()
    data_dir = data_dir or tempfile.mkdtemp(prefix="orchestratord-")
    argv = [sys.executable, "-m", "orchestratord", "serve", "--port", str(port),
            "--data-dir", data_dir, *(["--mock"] if mock else []), *(extra or [])]
    with open(pathlib.Path(data_dir) / "server.log", "ab") as log:  # the child keeps a dup
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
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
    raise RuntimeError(f"server not ready after 180 s; see {data_dir}/server.log")


def stop_server(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM the server and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _print_report(report: dict[str, Any]) -> None:
    yes = {True: "yes", False: "NO"}
    print(f"flow {report['flow_id']}  model {report['model']}  seed {report['seed']}")
    print(f"engine {report['engine']['engine']} ({report['engine']['engine_version']}) "
          f"replica {report['engine']['replica_id']}  model {report['engine']['model_hash'][:23]}…")
    print()
    print(f"{'mode':<14}{'steps':>6}{'tokens':>8}{'time_ms':>11}{'engine_requests':>17}")
    for m in report["modes"]:
        print(f"{m['mode']:<14}{m['steps']:>6}{m['tokens']:>8}{m['wall_ms']:>11.1f}"
              f"{m['engine_requests']:>17}")
    print()
    print(f"replay        token stream byte-identical to record: "
          f"{yes[report['replay_byte_identical']]}")
    print(f"strict_replay token stream byte-identical to record: "
          f"{yes[report['strict_replay_byte_identical']]}")
    print(f"replay time / record time: {report['replay_vs_record_time']:.4f}")
    print()
    for name, text in report["outputs"].items():
        print(f"[{name}] {text}")


def run_demo(*, url: str | None, as_json: bool, file: pathlib.Path | None,
             mock: bool = False) -> int:
    """Run the demo; exit code 0 only when both replays are byte-identical."""
    path = file or _default_file()
    document = path.read_text(encoding="utf-8")[:1500]
    proc = None
    if url is None:
        if not as_json:
            print(f"starting orchestratord ({'mock engine' if mock else 'llama.cpp, SmolLM2'})…",
                  flush=True)
        proc, url = start_server(mock=mock)

    async def go() -> dict[str, Any]:
        async with OrchestratorClient(url, timeout_s=120.0) as client:
            return await run_flow_modes(client, document)

    try:
        report = anyio.run(go)
    except OrchestratorError as exc:
        print(f"demo failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            stop_server(proc)
    report["document"] = str(path)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    ok = report["replay_byte_identical"] and report["strict_replay_byte_identical"]
    return 0 if ok else 1
