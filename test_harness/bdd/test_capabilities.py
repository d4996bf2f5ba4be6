"""Capabilities: step and frame types, tool executors, prices and every limit (NERVE-4076)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import ModelPrice, PriceTable, ServerConfig
from test_harness.support import app_client
from worker_adapters.base import ToolExecutorConfig

scenarios("capabilities.feature")

TEXT = {"type": "object", "required": ["text"], "additionalProperties": False,
        "properties": {"text": {"type": "string"}}}


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


@given(parsers.parse('a mock server pricing "{model}" at {usd_in:g} USD in and {usd_out:g} USD '
                     'out per million tokens'))
def priced(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], model: str,
           usd_in: float, usd_out: float) -> None:
    """The built-in tools and a price table of one model."""
    prices = PriceTable(version="test-prices-1", models={
        model: ModelPrice(usd_per_mtok_in=usd_in, usd_per_mtok_out=usd_out)})
    ctx["cfg"] = msgspec.structs.replace(mock_cfg, prices=prices)
    ctx["client"] = stack.enter_context(app_client(ctx["cfg"]))


@given(parsers.parse('a mock server whose only tool executor is argv "{program}" "{a}" "{b}"'))
def argv_tool(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], program: str,
              a: str, b: str) -> None:
    """One operator ``argv`` executor named after its program."""
    tools = {program: ToolExecutorConfig(kind="argv", argv=[program, a, b], timeout_ms=1500,
                                         max_output_bytes=4096)}
    ctx["cfg"] = msgspec.structs.replace(mock_cfg, tools=tools)
    ctx["client"] = stack.enter_context(app_client(ctx["cfg"]))


@when("I read the capabilities")
def read(ctx: dict[str, Any]) -> None:
    """GET /v1/capabilities."""
    resp = ctx["client"].get("/v1/capabilities")
    assert resp.status_code == 200, resp.text
    ctx["caps"] = resp.json()


@then("the step types and frame types are every value of StepType and FrameType")
def types(ctx: dict[str, Any]) -> None:
    """Listed in their declared order, spelled as on the wire."""
    assert ctx["caps"]["step_types"] == ["llm_plan", "llm_call", "tool_call", "fs_op",
                                         "gate_eval", "checkpoint"]
    assert ctx["caps"]["frame_types"] == [
        "started", "token", "tool_suggest", "fact", "metrics", "narration", "checkpoint",
        "escalation", "end", "error"]


@then("the tool executors are json_query, sha256 and wc with their exact input schemas")
def builtin_tools(ctx: dict[str, Any]) -> None:
    """Each built-in tool's input as its module documents it, and its default limits."""
    assert ctx["caps"]["tool_executors"] == [
        {"name": "json_query", "kind": "argv", "timeout_ms": 10_000,
         "max_output_bytes": 1_048_576,
         "args_schema": {"type": "object", "required": ["document", "path"],
                         "additionalProperties": False,
                         "properties": {"document": {}, "path": {"type": "string"}}}},
        {"name": "sha256", "kind": "argv", "timeout_ms": 10_000,
         "max_output_bytes": 1_048_576, "args_schema": TEXT},
        {"name": "wc", "kind": "argv", "timeout_ms": 10_000, "max_output_bytes": 1_048_576,
         "args_schema": TEXT}]


@then(parsers.parse('the price of "{model}" is {usd_in:g} in and {usd_out:g} out in price '
                    'table "{version}"'))
def price(ctx: dict[str, Any], model: str, usd_in: float, usd_out: float,
          version: str) -> None:
    """Every advertised model has a price; here the only one."""
    assert (ctx["caps"]["price_version"], ctx["caps"]["prices"]) == (
        version, {model: {"usd_per_mtok_in": usd_in, "usd_per_mtok_out": usd_out}})


@then("the limits name every bound with its configured or fixed value")
def limits(ctx: dict[str, Any]) -> None:
    """The configuration's bounds and the wire types' fixed ones, by name."""
    cfg: ServerConfig = ctx["cfg"]
    assert ctx["caps"]["limits"] == {
        "max_body_bytes": cfg.max_body_bytes, "max_json_depth": cfg.max_json_depth,
        "max_recorded_value_bytes": cfg.max_recorded_value_bytes,
        "max_gate_work": cfg.max_gate_work, "max_active_steps": cfg.max_active_steps,
        "max_queue_per_pool": max(p.queue_capacity for p in cfg.pools),
        "fs_max_bytes_written": cfg.fs_limits.max_bytes_written,
        "fs_max_files": cfg.fs_limits.max_files,
        "fs_max_file_bytes": cfg.fs_limits.max_file_bytes,
        "heartbeat_ms": cfg.heartbeat_ms, "disconnect_grace_ms": cfg.disconnect_grace_ms,
        "max_labels": 64, "max_label_key_chars": 128, "max_label_value_chars": 1024,
        "max_id_chars": 128, "max_client_token_chars": 256, "max_list_page": 1000,
        "max_flow_facts_page": 10_000, "max_run_facts_page": 10_000}


@then(parsers.parse('the only executor is "{name}" of kind argv whose schema requires count '
                    'and word as scalars'))
def argv_schema(ctx: dict[str, Any], name: str) -> None:
    """Placeholders sorted by name, each a string, number or boolean."""
    scalar = {"type": ["string", "number", "boolean"]}
    assert ctx["caps"]["tool_executors"] == [
        {"name": name, "kind": "argv", "timeout_ms": 1500, "max_output_bytes": 4096,
         "args_schema": {"type": "object", "required": ["count", "word"],
                         "properties": {"count": scalar, "word": scalar}}}]
