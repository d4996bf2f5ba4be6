"""The demo Flow and its interpreter: every Step type, on the real model.

The Flow summarises a document, plans tool calls over the summary, runs them, writes a
report through the FS broker, records a Fact, gates on it, checkpoints, and ends with a
title whose shape a ``response_contract`` fixes:

1. ``summary``: ``llm_call``, two or three sentences about the document;
2. ``plan``: ``llm_plan`` over the menu ``count_words`` (built-in ``wc``) and
   ``fingerprint`` (built-in ``sha256``);
3. ``act``: one ``tool_call`` per valid ``tool_suggest`` of the plan;
4. ``report``: ``fs_op`` ``write`` of ``report.md`` in the Run's sandbox root;
5. ``fact``: a ``report`` Fact (``urn:demo:report``) naming the file and the counts;
6. ``gate``: ``gate_eval`` that the report Fact says the summary has words;
7. ``checkpoint``: the interpreter state so far;
8. ``title``: ``llm_call`` with a JSON ``response_contract`` (title and 3 keywords).

Every later input is built from earlier outputs, as an interpreter feeds them, so a
replay that served anything different would show up as ``NONDETERMINISM``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from orchestratord.client import OrchestratorClient, StepResult

__all__ = ["DEMO_FLOW", "DEMO_TOOLS", "FACT_SCHEMAS", "TITLE_CONTRACT", "interpret"]

_TEXT_ARG: dict[str, Any] = {
    "type": "object", "required": ["text"], "additionalProperties": False,
    "properties": {"text": {"type": "string", "maxLength": 600}}}

DEMO_TOOLS: list[dict[str, Any]] = [
    {"name": "count_words", "executor": "wc", "parameters": _TEXT_ARG,
     "description": "Count the lines, words and characters of a text.",
     "output_schema": {"type": "object", "required": ["words"]}},
    {"name": "fingerprint", "executor": "sha256", "parameters": _TEXT_ARG,
     "description": "Compute the SHA-256 fingerprint of a text.",
     "output_schema": {"type": "object", "required": ["sha256"]}},
]

FACT_SCHEMAS: dict[str, Any] = {"urn:demo:report": {
    "type": "object", "required": ["path", "tools", "bytes"], "additionalProperties": False,
    "properties": {"path": {"type": "string"}, "bytes": {"type": "integer", "minimum": 0},
                   "tools": {"type": "object"}}}}

TITLE_CONTRACT: dict[str, Any] = {
    "type": "object", "required": ["title", "keywords"], "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 3, "maxLength": 80},
        "keywords": {"type": "array", "minItems": 3, "maxItems": 3,
                     "items": {"type": "string", "minLength": 2, "maxLength": 24}}}}

GATE = "length(by_type.report) > `0` && by_type.report[-1].bytes > `0`"

DEMO_FLOW: dict[str, Any] = {
    "version": 2,
    "name": "summarise-plan-act-report-gate-title",
    "steps": [
        {"id": "summary", "op": "llm_call", "inputs": ["document"]},
        {"id": "plan", "op": "llm_plan", "inputs": ["summary"],
         "tools": ["count_words", "fingerprint"]},
        {"id": "act", "op": "tool_call", "for_each": "plan.valid_suggestions"},
        {"id": "report", "op": "fs_op", "write": "report.md"},
        {"id": "fact", "op": "fact", "type": "report", "schema_uri": "urn:demo:report"},
        {"id": "gate", "op": "gate_eval", "expression": GATE},
        {"id": "checkpoint", "op": "checkpoint"},
        {"id": "title", "op": "llm_call", "inputs": ["summary", "act"],
         "response_contract": TITLE_CONTRACT},
    ],
}

_SYSTEM = "You are a precise technical writer. Answer briefly."


def _chat(model: str, user: str, **params: Any) -> dict[str, Any]:
    return {"model": model, "params": params,
            "messages": [{"role": "system", "content": _SYSTEM},
                         {"role": "user", "content": user}]}


def _ok(name: str, res: StepResult) -> StepResult:
    if res.terminal.event != "end":
        raise RuntimeError(f"step {name} ended with {res.terminal.raw}")
    return res


Progress = Callable[[str, StepResult, float], None]
"""``(step name, its result, its wall time in ms)``, called as each Step ends."""


async def interpret(client: OrchestratorClient, run_id: str, model: str,
                    document: str, progress: Progress | None = None) -> dict[str, Any]:
    """Run the demo Flow's eight steps in one Run, as the interpreter; ``progress`` hears
    of each Step as it ends (OBS-8071).

    Returns:
        ``{"results": {name: StepResult}, "gate": bool, "report": str, "wall_ms": float}``
        where ``results`` has one entry per Step in submission order.

    Raises:
        RuntimeError: a Step ended with an ``error`` frame, the plan had no valid
            suggestion, or the gate failed.
        contracts.errors.OrchestratorError: a submission was refused.
    """
    results: dict[str, StepResult] = {}
    t0 = time.perf_counter()

    async def step(name: str, body: dict[str, Any]) -> StepResult:
        started = time.perf_counter()
        res = _ok(name, await client.run_step(run_id, {"client_token": f"demo-{name}",
                                                       **body}))
        results[name] = res
        if progress is not None:
            progress(name, res, (time.perf_counter() - started) * 1000)
        return res

    summary = (await step("summary", {"type": "llm_call", "input": _chat(
        model, "Summarise the following document in two or three sentences.\n\n" + document,
        temperature=0.0, max_tokens=96)})).text.strip()

    plan = await step("plan", {"type": "llm_plan", "input": {
        **_chat(model, f'Call count_words and fingerprint on this exact text: "{summary}"',
                temperature=0.0, max_tokens=384),
        "tools": ["count_words", "fingerprint"], "max_intents": 2}})
    valid = [s.json() for s in plan.suggestions if s.json()["valid"]]
    if not valid:
        raise RuntimeError(f"the plan has no valid tool suggestion: {plan.output}")

    tool_outputs: dict[str, Any] = {}
    for i, sug in enumerate(valid):
        res = await step(f"act-{i}", {"type": "tool_call", "input": {
            "tool": sug["tool"], "args": sug["args"]}})
        tool_outputs[sug["tool"]] = res.output

    report = (f"# Report\n\n{summary}\n\n## Tool results\n\n"
              + "".join(f"- {k}: {json.dumps(v, sort_keys=True)}\n"
                        for k, v in sorted(tool_outputs.items())))
    written = await step("report", {"type": "fs_op", "input": {
        "op": "write", "path": "report.md", "content": report}})

    await client.append_fact(run_id, {
        "type": "report", "schema_uri": "urn:demo:report",
        "data": {"path": "report.md", "bytes": written.output["bytes_written"],
                 "tools": tool_outputs}})
    gate = (await step("gate", {"type": "gate_eval", "input": {"expression": GATE}})).output
    if not gate["passed"]:
        raise RuntimeError(f"the gate failed: {gate}")

    await step("checkpoint", {"type": "checkpoint", "input": {"snapshot": {
        "done": list(results), "summary_sha256": hashlib.sha256(summary.encode()).hexdigest(),
        "tools": tool_outputs, "next": "title"}}})

    await step("title", {"type": "llm_call", "input": {
        **_chat(model, "Give a title of at most ten words and exactly three keywords for a "
                       "document with this summary. Answer in JSON.\n\n"
                       f"Summary: {summary}\nWord count: "
                       f"{tool_outputs.get('count_words', {}).get('words', 'unknown')}",
                temperature=0.8, max_tokens=96),
        "response_contract": TITLE_CONTRACT}})
    return {"results": results, "gate": gate["passed"], "report": report,
            "wall_ms": (time.perf_counter() - t0) * 1000}
