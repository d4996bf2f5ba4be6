"""The main job: record the demo Flow on the real model, replay it, strict-replay it.

The demo is the interpreter (:mod:`tools.demo_flow`: all six Step types, a Fact and a
checkpoint), a client of the server like any other. It starts ``orchestratord serve``
through :mod:`tools.servers` (default config: one CPU pool running llama.cpp on
SmolLM2-135M-Instruct, the built-in tool executors) unless ``--url`` is given, posts the
Flow, and runs it three times:

1. ``record``: the LLM Steps run on the engine, the tools and the FS broker for real;
2. ``replay``: every recorded result is served; the engine, the tools and the file
   system are not touched, which the server's own counters show;
3. ``strict_replay``: inference runs again on the recorded replica and every token is
   checked against the recording; tool and FS results are served, the gate is
   evaluated again.

The report says whether the token streams (index, text bytes, token id), the
``tool_suggest`` frames and every Step's output are identical across the three modes.

Run it as ``python -m tools.demo [--url URL] [--json] [--file PATH] [--mock]``;
``bash tools/demo.sh`` sets everything up first and then does that. It prints its
progress (each mode, each Step with its type, tokens and time) and the files it read on
stderr, the report on stdout. Without ``--file`` it summarises the repository's
``specs/20_stream_and_replay.md``, found from this file, so the report is the same from
any directory (OBS-8071).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import anyio

from contracts.errors import OrchestratorError
from orchestratord.client import OrchestratorClient, StepResult
from tools.demo_flow import DEMO_FLOW, DEMO_TOOLS, FACT_SCHEMAS, interpret
from tools.servers import start_server, stop_server

__all__ = ["DEMO_FLOW", "main", "run_demo", "run_flow_modes"]

_COUNTERS = {"engine_requests": "orchestrator_engine_requests_total",
             "tool_executions": "orchestrator_tool_executions_total",
             "fs_operations": "orchestrator_fs_operations_total"}
_LLM_STEPS = ("summary", "plan", "title")


ROOT = pathlib.Path(__file__).resolve().parents[1]
"""The repository root: the demo's inputs are found from here, never from the cwd."""

DEFAULT_FILE = ROOT / "specs" / "20_stream_and_replay.md"
"""The document the demo summarises unless ``--file`` names another."""


def _shown(path: pathlib.Path) -> str:
    """A path as the report names it: relative to the repository when inside it, so the
    report does not depend on where the checkout or the shell is."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress(mode: str) -> Callable[[str, StepResult, float], None]:
    """Print one line per Step of ``mode`` as it ends (OBS-8071)."""

    def show(name: str, res: StepResult, ms: float) -> None:
        _say(f"  [{mode}] {name:<11}{res.step.type.value:<11}{len(res.tokens):>5} tokens"
             f"{ms:>9.0f} ms")

    return show


async def _counters(client: OrchestratorClient) -> dict[str, int]:
    """The server's engine, tool and FS counters, summed over their labels."""
    text = (await client._http.get("/metrics")).text
    return {key: sum(int(float(m)) for m in re.findall(
        rf"^{name}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)) for key, name in _COUNTERS.items()}


async def _run_mode(client: OrchestratorClient, flow_id: str, model: str, document: str,
                    mode: str, seed: int, replay_of: str | None,
                    fs_root: str) -> dict[str, Any]:
    run = await client.create_run(flow_id, mode=mode, seed=seed,
                                  fs_policy={"roots": [fs_root],
                                             "allow": {"write": ["report.md"]}},
                                  **({"replay_of": replay_of} if replay_of else {}))
    _say(f"{mode}: run {run.run_id}")
    before = await _counters(client)
    done = await interpret(client, run.run_id, model, document, _progress(mode))
    after = await _counters(client)
    results = done["results"]
    return {
        "run_id": run.run_id, "mode": mode, "steps": len(results),
        "tokens": sum(len(r.tokens) for r in results.values()),
        "wall_ms": round(done["wall_ms"], 1),
        **{k: after[k] - before[k] for k in _COUNTERS},
        "token_stream": {n: [f.raw for f in results[n].tokens] for n in _LLM_STEPS},
        "suggestions": [f.raw for f in results["plan"].suggestions],
        "outputs": {n: r.output for n, r in results.items()},
        "types": {n: r.step.type.value for n, r in results.items()},
        "provenance": results["summary"].terminal.json()["provenance"],
    }


async def run_flow_modes(client: OrchestratorClient, document: str,
                         seed: int = 20261121) -> dict[str, Any]:
    """Record, replay and strict_replay the demo flow; return the comparison report."""
    caps = await client.capabilities()
    if not caps.sandbox_parents:
        raise RuntimeError("the server allows no sandbox parent for the FS broker")
    model = caps.models[0].id
    flow = await client.create_flow(DEMO_FLOW, tools=DEMO_TOOLS,
                                    config={"model": model, "fact_schemas": FACT_SCHEMAS})
    fs_root = os.path.join(caps.sandbox_parents[0], f"demo-{flow.hash[3:15]}-{seed}")
    rec = await _run_mode(client, flow.flow_id, model, document, "record", seed, None,
                          fs_root)
    rep = await _run_mode(client, flow.flow_id, model, document, "replay", seed,
                          rec["run_id"], fs_root)
    strict = await _run_mode(client, flow.flow_id, model, document, "strict_replay", seed,
                             rec["run_id"], fs_root)
    modes = [{k: r[k] for k in ("mode", "run_id", "steps", "tokens", "wall_ms", *_COUNTERS)}
             for r in (rec, rep, strict)]

    def same(key: str, other: dict[str, Any]) -> bool:
        return bool(other[key] == rec[key])
    return {
        "flow_id": flow.flow_id, "flow_hash": flow.hash, "model": model, "seed": seed,
        "step_types": sorted(set(rec["types"].values())),
        "modes": modes,
        "replay_byte_identical": same("token_stream", rep) and same("suggestions", rep),
        "strict_replay_byte_identical": same("token_stream", strict)
        and same("suggestions", strict),
        "replay_outputs_identical": same("outputs", rep),
        "strict_replay_outputs_identical": same("outputs", strict),
        "replay_vs_record_time": round(rep["wall_ms"] / rec["wall_ms"], 4),
        "fs_root": fs_root,
        "outputs": {"summary": rec["outputs"]["summary"]["text"].strip(),
                    "plan": [json.loads(s) for s in rec["suggestions"]],
                    "tools": {k: v for k, v in rec["outputs"].items() if k.startswith("act-")},
                    "gate": rec["outputs"]["gate"]["passed"],
                    "checkpoint": rec["outputs"]["checkpoint"],
                    "title": rec["outputs"]["title"]["value"]},
        "engine": {k: rec["provenance"][k] for k in
                   ("engine", "engine_version", "model_hash", "replica_id", "engine_build")},
    }


def _print_report(report: dict[str, Any]) -> None:
    yes = {True: "yes", False: "NO"}
    print(f"flow {report['flow_id']}  model {report['model']}  seed {report['seed']}")
    print(f"engine {report['engine']['engine']} ({report['engine']['engine_version']}) "
          f"replica {report['engine']['replica_id']}  model {report['engine']['model_hash'][:23]}…")
    print(f"step types: {', '.join(report['step_types'])}")
    print()
    print(f"{'mode':<14}{'steps':>6}{'tokens':>8}{'time_ms':>10}{'engine_requests':>17}"
          f"{'tool_executions':>17}{'fs_operations':>15}")
    for m in report["modes"]:
        print(f"{m['mode']:<14}{m['steps']:>6}{m['tokens']:>8}{m['wall_ms']:>10.1f}"
              f"{m['engine_requests']:>17}{m['tool_executions']:>17}{m['fs_operations']:>15}")
    print()
    for mode in ("replay", "strict_replay"):
        print(f"{mode:<14}token streams and tool_suggest frames byte-identical to record: "
              f"{yes[report[f'{mode}_byte_identical']]}; every step output identical: "
              f"{yes[report[f'{mode}_outputs_identical']]}")
    print(f"replay time / record time: {report['replay_vs_record_time']:.4f}")
    print()
    for name, value in report["outputs"].items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        print(f"[{name}] {text}")


def run_demo(*, url: str | None, as_json: bool, file: pathlib.Path | None,
             mock: bool = False) -> int:
    """Run the demo; exit code 0 only when both replays are byte-identical, every output
    is identical, and ``replay`` made no engine, tool or file-system call."""
    path = file or DEFAULT_FILE
    document = path.read_text(encoding="utf-8")[:1500]
    _say(f"read {path.resolve()} (the first {len(document)} characters)")
    proc = None
    if url is None:
        _say(f"starting orchestratord ({'mock engine' if mock else 'llama.cpp, SmolLM2'})…")
        data_dir = tempfile.mkdtemp(prefix="orchestratord-demo-")
        proc, url = start_server(mock=mock, data_dir=data_dir)
        _say(f"server {url}; its data and log in {data_dir}")

    async def go() -> dict[str, Any]:
        async with OrchestratorClient(url, timeout_s=120.0) as client:
            return await run_flow_modes(client, document)

    try:
        report = anyio.run(go)
    except (OrchestratorError, RuntimeError) as exc:
        print(f"demo failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        if proc is not None:
            stop_server(proc)
    report["document"] = _shown(path)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)
    ok = all(report[f"{mode}_{what}"] for mode in ("replay", "strict_replay")
             for what in ("byte_identical", "outputs_identical"))
    replay = report["modes"][1]
    ok = ok and replay["engine_requests"] == replay["tool_executions"] == \
        replay["fs_operations"] == 0
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Command line of ``python -m tools.demo`` (``bash tools/demo.sh`` passes its
    arguments here).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code of :func:`run_demo`.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description="Record, replay and strict_replay the demo Flow on a real server.")
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--file", default=None, help="the file the flow summarises")
    parser.add_argument("--mock", action="store_true", help="mock engine (no model)")
    args = parser.parse_args(argv)
    return run_demo(url=args.url, as_json=args.json,
                    file=pathlib.Path(args.file) if args.file else None, mock=args.mock)


if __name__ == "__main__":
    sys.exit(main())
