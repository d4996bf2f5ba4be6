"""The demo's round trip through a recording file (REC-7110, REC-7111): record the demo
Flow on one server, export the Run, import the file into another server that has no
engine, replay it there with the demo's own interpreter, and collect what a test compares.

Used by the mock twin (``test_harness/unit/test_roundtrip.py``) and by the real-engine
test (``test_harness/integration/test_roundtrip_engine.py``): the same steps, only the
recording server's engine differs.
"""

from __future__ import annotations

import os
import re
from typing import Any

import httpx
import msgspec

from orchestrator_core.config import ServerConfig
from orchestratord.client import OrchestratorClient
from tools.demo import DEFAULT_FILE
from tools.demo_flow import DEMO_FLOW, DEMO_TOOLS, FACT_SCHEMAS, interpret

__all__ = ["DOCUMENT", "LLM_STEPS", "SEED", "no_engine", "record_demo", "replay_demo",
           "shared_sandboxes"]

DOCUMENT = DEFAULT_FILE.read_text(encoding="utf-8")[:1500]
"""The document the demo summarises, as ``python -m tools.demo`` reads it."""
SEED = 20261121
"""The demo's seed: with it and this document, SmolLM2's title satisfies its contract."""
LLM_STEPS = ("summary", "plan", "title")
"""The demo's LLM Steps: the ones whose rendered prompt the server keeps (NERVE-4091)."""


def shared_sandboxes(cfg: ServerConfig, parent: str) -> ServerConfig:
    """``cfg`` with ``parent`` as its only sandbox parent: the recording server and the
    importing one share it, so the imported Run's ``fs_policy`` passes the import's
    check (REC-7009)."""
    return msgspec.structs.replace(cfg, fs_limits=msgspec.structs.replace(
        cfg.fs_limits, allowed_parents=[parent]))


def no_engine(cfg: ServerConfig, data_dir: str) -> ServerConfig:
    """``cfg`` with no pool at all and a fresh data directory: a server with no engine."""
    return msgspec.structs.replace(cfg, pools=[], data_dir=data_dir)


async def _engine_requests(client: OrchestratorClient) -> int:
    """The server's own count of engine requests, summed over its labels."""
    text = (await client._http.get("/metrics")).text
    return sum(int(float(m)) for m in re.findall(
        r"^orchestrator_engine_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


async def _streams(url: str, step_ids: list[str]) -> list[bytes]:
    """The SSE bytes of each finished Step, as a client reads them from the start."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        return [(await http.get(f"/v1/steps/{s}/stream")).content for s in step_ids]


async def _prompts(url: str, step_ids: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/steps/{id}/prompt`` of the demo's LLM Steps: status and body without
    the step id, by step name."""
    got: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        for name in LLM_STEPS:
            resp = await http.get(f"/v1/steps/{step_ids[name]}/prompt")
            body = resp.json()
            got[name] = (resp.status_code, {k: v for k, v in body.items() if k != "step_id"})
    return got


async def record_demo(url: str, parent: str) -> dict[str, Any]:
    """Record the demo Flow on the server at ``url`` and export the Run.

    Args:
        url: a server with an engine, whose only sandbox parent is ``parent``.
        parent: the sandbox parent (the fs_op Step writes in the default tenant's
            directory of it).

    Returns:
        ``{"run_id", "model", "fs_root", "recording": bytes, "streams": [bytes] in
        submission order, "prompts": {name: (status, body)}}``.
    """
    async with OrchestratorClient(url, timeout_s=300.0) as client:
        model = (await client.capabilities()).models[0].id
        flow = await client.create_flow(DEMO_FLOW, tools=DEMO_TOOLS,
                                        config={"model": model, "fact_schemas": FACT_SCHEMAS})
        fs_root = os.path.join(parent, "default", f"roundtrip-{SEED}")
        run = await client.create_run(flow.flow_id, mode="record", seed=SEED,
                                      fs_policy={"roots": [fs_root],
                                                 "allow": {"write": ["report.md"]}})
        done = await interpret(client, run.run_id, model, DOCUMENT)
        ids = {name: res.step.step_id for name, res in done["results"].items()}
        recording = await client.recording(run.run_id)
    return {"run_id": run.run_id, "model": model, "fs_root": fs_root,
            "recording": recording, "streams": await _streams(url, list(ids.values())),
            "prompts": await _prompts(url, ids)}


async def replay_demo(url: str, recorded: dict[str, Any]) -> dict[str, Any]:
    """Import ``recorded["recording"]`` into the server at ``url`` and replay the demo
    Flow against the imported Run with the same interpreter.

    Args:
        url: a server with no engine sharing the recording server's sandbox parent.
        recorded: what :func:`record_demo` answered.

    Returns:
        ``{"imported": RecordingImported, "streams": [bytes] of the replay's Steps in
        submission order, "engine_requests": the server's count during the replay,
        "prompts": {name: (status, body)} of the imported Run's Steps}``.
    """
    async with OrchestratorClient(url, timeout_s=300.0) as client:
        imported = await client.import_recording(recorded["recording"])
        steps = (await client.list_steps(imported.run_id))[0]
        before = await _engine_requests(client)
        run = await client.create_run(imported.flow_id, mode="replay", seed=SEED,
                                      replay_of=imported.run_id,
                                      fs_policy={"roots": [recorded["fs_root"]],
                                                 "allow": {"write": ["report.md"]}})
        done = await interpret(client, run.run_id, recorded["model"], DOCUMENT)
        after = await _engine_requests(client)
    by_token = {s.client_token: s.step_id for s in steps}
    ids = [res.step.step_id for res in done["results"].values()]
    return {"imported": imported, "streams": await _streams(url, ids),
            "engine_requests": after - before,
            "prompts": await _prompts(url, {n: by_token[f"demo-{n}"] for n in LLM_STEPS})}
