"""Valid request bodies of the body operations, aimed at the ids a fuzz fixture seeded.

The hostile generators (:mod:`test_harness.fuzz.hostile`) start from these bodies and
spoil one position of them: :class:`Op` lists, for each operation, the string, free-JSON and
numeric positions a hostile value may take. :func:`encode` writes a body as JSON, splicing
:class:`Raw` bytes in verbatim, which is how invalid UTF-8, 20,000-level nesting and
number literals no Python value has (``1e999``) get into a body.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FRESH_TOKEN", "FS_ALLOW", "MAX_DEPTH", "SEED_FLOW", "STEP", "Op", "Raw", "Targets",
           "encode", "operations", "set_at"]

FRESH_TOKEN = "@@fresh-client-token@@"
"""Placeholder client_token, replaced by a new one when the request is sent."""
MAX_DEPTH = 64
"""The server's default ``max_json_depth``: deeper bodies are refused at the edge."""
STEP = "POST /v1/runs/{run_id}/steps"
"""Label of the step submission route; a step type follows it in case labels."""


class Raw(bytes):
    """JSON text spliced verbatim into a body by :func:`encode` (as a value or a key)."""


@dataclass(frozen=True)
class Targets:
    """Ids the fixture seeded: a Flow declaring tools ``count``/``query`` and fact schema
    ``urn:fuzz:score``, a record Run (with an fs sandbox when ``fs_root``), a Run without
    Facts for gates, a finished Step, and the served model."""

    flow_id: str
    run_id: str
    gate_run_id: str
    step_id: str
    model: str
    fs_root: str | None = None


def encode(value: Any) -> bytes:
    """JSON bytes of ``value``, with :class:`Raw` values and keys spliced in verbatim."""
    if isinstance(value, Raw):
        return bytes(value)
    if isinstance(value, dict):
        return b"{" + b",".join(
            (bytes(k) if isinstance(k, Raw) else json.dumps(k).encode()) + b":" + encode(v)
            for k, v in value.items()) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(encode(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode()


def set_at(body: Any, path: tuple[Any, ...], value: Any) -> None:
    """Replace the value at ``path`` (keys and indexes) in ``body``."""
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


# -- valid bodies ------------------------------------------------------------------------

COUNT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string", "maxLength": 4096}},
                "required": ["text"], "additionalProperties": False}
QUERY_SCHEMA = {"type": "object", "properties": {"document": {}, "path": {"type": "string"}},
                "required": ["document", "path"], "additionalProperties": False}
SCORE_SCHEMA = {"type": "object", "required": ["score"],
                "properties": {"score": {"type": "number"}}}
SEED_FLOW: dict[str, Any] = {
    "ast_ir": {"suite": "hostile-fuzz", "steps": [{"op": "call", "args": {"x": 1}}]},
    "tools": [{"name": "count", "executor": "wc", "parameters": COUNT_SCHEMA,
               "description": "Count the words of a text."},
              {"name": "query", "executor": "json_query", "parameters": QUERY_SCHEMA}],
    "config": {"fact_schemas": {"urn:fuzz:score": SCORE_SCHEMA}, "extra": {"k": "v"}},
    "labels": {"suite": "fuzz"},
}
"""The seeded Flow; also the valid body of ``POST /v1/flows`` (with another ``ast_ir``)."""
FS_ALLOW = {"write": ["out/*.txt"], "read": ["out/*.txt"], "list": ["out"], "mkdir": ["out"]}
_PARAMS = {"temperature": 0.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
           "repeat_penalty": 1.0, "max_tokens": 8, "seed": 3, "stop": ["\n\n"]}
_BUDGETS = {"max_tokens_in": 100_000, "max_tokens_out": 100_000, "max_wall_ms": 60_000,
            "max_cost_usd": 1.0}


@dataclass
class Op:
    """A body operation: its valid body and the positions a hostile value may take."""

    label: str
    path: str
    body: dict[str, Any]
    strings: list[tuple[Any, ...]]
    free: list[tuple[Any, ...]]
    numbers: list[tuple[Any, ...]] = field(default_factory=list)


def operations(t: Targets) -> list[Op]:
    """One valid body per body operation and step type, aimed at the seeded ids."""
    steps = f"/v1/runs/{t.run_id}/steps"
    budgets = [("budgets", k) for k in _BUDGETS]
    flow = copy.deepcopy(SEED_FLOW)
    flow["ast_ir"]["suite"] = "hostile-case"
    run: dict[str, Any] = {"mode": "record", "seed": 7, "budgets": dict(_BUDGETS),
                           "policy": {"redact": ["secret-[0-9]+"]}, "labels": {"suite": "f"}}
    run_numbers: list[tuple[Any, ...]] = [("seed",), *budgets]
    if t.fs_root is not None:
        run["fs_policy"] = {"roots": [t.fs_root], "allow": FS_ALLOW, "max_bytes_written": 10**6,
                            "max_files": 100, "max_file_bytes": 10**5}
        run_numbers += [("fs_policy", k) for k in ("max_bytes_written", "max_files",
                                                   "max_file_bytes")]
    llm_in = {"model": t.model, "prompt": "hello", "params": dict(_PARAMS),
              "response_contract": {"type": "object", "required": ["answer"],
                                    "properties": {"answer": {"type": "string"}}}}
    ops = [
        Op("POST /v1/flows", "/v1/flows", flow,
            [("ast_ir", "suite"), ("tools", 0, "name"), ("tools", 0, "description"),
             ("labels", "suite")],
            [("ast_ir", "steps", 0, "args", "x"), ("config", "extra"),
             ("tools", 1, "parameters", "x-annotation")],
            [("ast_ir", "steps", 0, "args", "x"),
             ("tools", 0, "parameters", "properties", "text", "maxLength")]),
        Op("POST /v1/flows/{flow_id}/runs", f"/v1/flows/{t.flow_id}/runs", run,
            [("mode",), ("labels", "suite"), ("policy", "redact", 0)], [("labels",)],
            run_numbers),
        Op(f"{STEP} llm_call", steps,
            {"type": "llm_call", "client_token": FRESH_TOKEN, "input": llm_in,
             "budgets": dict(_BUDGETS)},
            [("client_token",), ("input", "model"), ("input", "prompt"),
             ("input", "params", "stop", 0)],
            [("input", "response_contract", "x-annotation"),
             ("input", "response_contract", "properties", "answer", "default")],
            [("input", "params", k) for k in _PARAMS if k != "stop"] + budgets),
        Op(f"{STEP} llm_plan", steps,
            {"type": "llm_plan", "client_token": FRESH_TOKEN,
             "input": {"model": t.model, "prompt": "count my words", "tools": ["count"],
                       "max_intents": 2, "params": dict(_PARAMS)}},
            [("client_token",), ("input", "prompt"), ("input", "tools", 0)], [("input",)],
            [("input", "max_intents"), ("input", "params", "max_tokens"),
             ("input", "params", "top_k"), ("input", "params", "seed")]),
        Op(f"{STEP} tool_call", steps,
            {"type": "tool_call", "client_token": FRESH_TOKEN,
             "input": {"tool": "query", "args": {"document": {"a": [1, {"b": "c"}], "n": 1},
                                                 "path": "a[1].b"}}, "budgets": dict(_BUDGETS)},
            [("client_token",), ("input", "tool"), ("input", "args", "path")],
            [("input", "args", "document"), ("input", "args", "document", "a", 1)],
            [("input", "args", "document", "n"), ("budgets", "max_wall_ms")]),
        Op(f"{STEP} gate_eval", steps,
            {"type": "gate_eval", "client_token": FRESH_TOKEN,
             "input": {"expression": "by_type.score[0].score", "wait_ms": 0},
             "budgets": dict(_BUDGETS)},
            [("client_token",), ("input", "expression")], [("input",)],
            [("input", "wait_ms"), ("budgets", "max_wall_ms")]),
        Op(f"{STEP} checkpoint", steps,
            {"type": "checkpoint", "client_token": FRESH_TOKEN,
             "input": {"snapshot": {"pc": 3, "note": "n", "state": {"x": [1, 2]}}}},
            [("client_token",), ("input", "snapshot", "note")],
            [("input", "snapshot", "state"), ("input", "snapshot", "state", "x")],
            [("input", "snapshot", "pc")]),
        Op("POST /v1/runs/{run_id}/facts", f"/v1/runs/{t.run_id}/facts",
            {"type": "score", "schema_uri": "urn:fuzz:score",
             "data": {"score": 0.5, "note": "n", "extra": {"k": [1]}}},
            [("type",), ("schema_uri",), ("data", "note")],
            [("data", "extra"), ("data", "extra", "k")], [("data", "score")]),
        Op("POST /v1/runs/{run_id}/checkpoint", f"/v1/runs/{t.run_id}/checkpoint",
            {"snapshot": {"pc": 1, "note": "n", "state": {"stack": [1, 2]}}},
            [("snapshot", "note")], [("snapshot", "state"), ("snapshot", "state", "stack")],
            [("snapshot", "pc")]),
    ]
    if t.fs_root is not None:
        ops.insert(5, Op(
            f"{STEP} fs_op", steps,
            {"type": "fs_op", "client_token": FRESH_TOKEN,
             "input": {"op": "write", "path": "out/fuzz.txt", "content": "hi", "root": 0},
             "budgets": dict(_BUDGETS)},
            [("client_token",), ("input", "path"), ("input", "content")], [("input",)],
            [("input", "root"), ("budgets", "max_wall_ms")]))
    return ops


