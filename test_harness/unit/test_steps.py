"""Step types behind one protocol: the registry, the replay table, async admission and the
provenance of failed Steps (PLACE-5010, NERVE-4024, NERVE-4003, NERVE-4020)."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, cast

import anyio
import msgspec
import pytest

from contracts.errors import Conflict
from contracts.flows import FlowCreate
from contracts.runs import RunCreate
from contracts.steps import Step, StepSubmit
from orchestrator_core.config import mock_config
from orchestrator_core.service import Orchestrator
from orchestrator_core.steps.base import StepContext
from orchestrator_core.steps.checkpoint import Checkpoint
from orchestrator_core.steps.fs_op import FsOp
from orchestrator_core.steps.gate_eval import GateEval
from orchestrator_core.steps.llm import Llm
from orchestrator_core.steps.registry import StepKinds, discover
from orchestrator_core.steps.tool_call import ToolCall
from test_harness.support import llm_step
from worker_adapters.base import CompletionRequest, Delta, PreparedPrompt
from worker_adapters.mock import MockEngine
from worker_adapters.registry import default_drivers
from worker_adapters.tools import tool_registry

pytestmark = pytest.mark.anyio

ROOT = pathlib.Path(__file__).resolve().parents[2]
REAL_TIME_LIMIT_S = 5.0
_NO_CONTEXT = cast(StepContext, None)  # the registry only hands it to each class


class TestRegistry:
    """The registry finds one module per Step type (PLACE-5010)."""

    def test_discovery_finds_the_five_step_modules(self) -> None:
        """Every module of orchestrator_core/steps but the infrastructure lists its
        classes in KINDS, and discovery returns them in module-name order [PLACE-5010]."""
        assert discover() == (Checkpoint, FsOp, GateEval, Llm, ToolCall)

    def test_every_wire_type_has_exactly_one_implementation(self) -> None:
        """Each member of the StepSubmit union maps to its type name and class."""
        kinds = StepKinds(_NO_CONTEXT)
        bodies = {
            "llm_call": llm_step("a"),
            "llm_plan": {"type": "llm_plan", "client_token": "b",
                         "input": {"model": "m", "prompt": "p"}},
            "tool_call": {"type": "tool_call", "client_token": "c", "input": {"tool": "t"}},
            "fs_op": {"type": "fs_op", "client_token": "d",
                      "input": {"op": "read", "path": "x"}},
            "gate_eval": {"type": "gate_eval", "client_token": "e",
                          "input": {"expression": "facts"}},
            "checkpoint": {"type": "checkpoint", "client_token": "f",
                           "input": {"snapshot": {}}},
        }
        found = {name: kinds.of(msgspec.convert(body, StepSubmit))
                 for name, body in bodies.items()}
        assert {name: (t, type(k).__name__) for name, (t, k) in found.items()} == {
            "llm_call": ("llm_call", "Llm"), "llm_plan": ("llm_plan", "Llm"),
            "tool_call": ("tool_call", "ToolCall"), "fs_op": ("fs_op", "FsOp"),
            "gate_eval": ("gate_eval", "GateEval"), "checkpoint": ("checkpoint", "Checkpoint")}

    def test_a_wire_type_without_a_module_refuses_to_start(self) -> None:
        """A StepSubmit member no class implements is named at start-up [PLACE-5010]."""
        with pytest.raises(RuntimeError) as err:
            StepKinds(_NO_CONTEXT, [k for k in discover() if k is not GateEval])
        assert str(err.value) == "no step module implements gate_eval"

    def test_two_classes_for_one_type_refuse_to_start(self) -> None:
        """A type is implemented once."""
        with pytest.raises(RuntimeError) as err:
            StepKinds(_NO_CONTEXT, [*discover(), GateEval])
        assert str(err.value) == "step type gate_eval has two classes"

    def test_the_replay_table_of_the_spec_is_the_registry_s(self) -> None:
        """specs/20_stream_and_replay.md states what every type does in each mode, exactly
        as the step classes declare it [NERVE-4024]."""
        spec = (ROOT / "specs" / "20_stream_and_replay.md").read_text()
        head = "| Step type | `record` | `replay` | `strict_replay` |"
        rows = []
        for line in spec[spec.index(head):].splitlines()[2:]:
            if not line.strip().startswith("|"):
                break
            rows.append(tuple(c.strip() for c in line.strip().strip("|").split("|")))
        assert rows == StepKinds(_NO_CONTEXT).replay_table()
        assert [r[0] for r in rows] == ["`llm_call`, `llm_plan`", "`tool_call`", "`fs_op`",
                                        "`gate_eval`", "`checkpoint`"]


class _SlowPrepare(MockEngine):
    """A mock engine whose prompt count waits until the test releases it."""

    gate: ClassVar[anyio.Event | None] = None
    waiting: ClassVar[int] = 0

    async def aprepare(self, *, prompt: str | None,
                       messages: Sequence[dict[str, str]] | None) -> PreparedPrompt:
        type(self).waiting += 1
        assert self.gate is not None
        await self.gate.wait()
        return self.prepare(prompt=prompt, messages=messages)


async def _stalls(_request: CompletionRequest) -> AsyncIterator[Any]:
    """Three tokens, then nothing until cancelled."""
    for i in range(3):
        yield Delta(text=f"t{i} ", token_id=100 + i)
    await anyio.sleep_forever()


async def _until(predicate: Any) -> None:
    """Poll ``predicate`` every millisecond until it holds (a thread and an engine task
    make it true, so there is no event to wait for)."""
    while not predicate():  # noqa: ASYNC110 - polled state of other tasks and threads
        await anyio.sleep(0.001)


class TestAsyncAdmission:
    """Admission awaits the engine's prompt count and stays idempotent (NERVE-4003)."""

    @pytest.mark.parametrize(("second_prompt", "expected"), [
        ("hello world", "same step"), ("another prompt", "CONFLICT")])
    async def test_two_submits_of_one_token_while_the_engine_counts(
            self, tmp_path: pathlib.Path, second_prompt: str, expected: str) -> None:
        """Both submits of one client_token pass the token check, then wait for the
        engine; the one stored second answers as a repeated token does: the same Step
        (200) for the same input, CONFLICT for another [NERVE-4003]."""
        _SlowPrepare.gate, _SlowPrepare.waiting = anyio.Event(), 0
        drivers = default_drivers(mock_factory=lambda _pc, _i: _SlowPrepare())
        cfg = mock_config(data_dir=str(tmp_path / "data"))
        answers: list[tuple[Step, bool] | Conflict] = []

        async def submit(orch: Orchestrator, run_id: str, prompt: str) -> None:
            body = msgspec.convert(llm_step("same-token", prompt), StepSubmit)
            try:
                answers.append(await orch.submit_step(run_id, body))
            except Conflict as err:
                answers.append(err)

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"race": 1}))
                run = orch.create_run(flow.flow_id, RunCreate(seed=7))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(submit, orch, run.run_id, "hello world")
                    tg.start_soon(submit, orch, run.run_id, second_prompt)
                    await _until(lambda: _SlowPrepare.waiting == 2)
                    _SlowPrepare.gate.set()
                steps = orch.store.list_steps(run.run_id)
                for row in steps:
                    orch.cancel_step(row.step_id)
        first, second = answers
        assert not isinstance(first, Conflict)
        assert (len(steps), first[1]) == (1, True)
        if expected == "same step":
            assert not isinstance(second, Conflict)
            assert (second[0].step_id, second[1]) == (first[0].step_id, False)
        else:
            assert isinstance(second, Conflict)
            assert (second.message, (second.data or {})["step_id"]) == (
                "client_token 'same-token' was used with another input", first[0].step_id)


class TestFailedStepsCarryProvenance:
    """Every terminal frame carries the Step's provenance, with what it used (NERVE-4020)."""

    async def test_a_cancelled_llm_step_records_its_tokens_and_provenance(
            self, tmp_path: pathlib.Path) -> None:
        """An llm_call cancelled after 3 tokens ends CANCELLED; its error frame and the
        Step carry the LLM block with those 3 tokens and no finish_reason [NERVE-4020]."""
        drivers = default_drivers(mock_factory=lambda _pc, _i: MockEngine(_stalls))
        cfg = mock_config(data_dir=str(tmp_path / "data"))
        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with Orchestrator.running(cfg, drivers=drivers, tools=tool_registry) as orch:
                flow, _ = orch.create_flow(FlowCreate(ast_ir={"cancel": 1}))
                run = orch.create_run(flow.flow_id, RunCreate(seed=7))
                body = msgspec.convert(llm_step("c-1", "hello world"), StepSubmit)
                step, _ = await orch.submit_step(run.run_id, body)
                await _until(lambda: sum(1 for _s, t, _d in orch.log.read_rows(step.step_id)
                                         if t == "token") == 3)
                orch.cancel_step(step.step_id)
                await _until(lambda: orch.get_step(step.step_id).status.terminal)
                done = orch.get_step(step.step_id)
                frames = [(t, json.loads(d)) for _s, t, d in orch.log.read_rows(step.step_id)]
        assert [t for t, _d in frames] == ["started", "token", "token", "token", "error"]
        error = frames[-1][1]
        prov = error.pop("provenance")
        assert error == {"code": "CANCELLED", "message": "step cancelled",
                         "retriable": False}
        assert prov == msgspec.to_builtins(done.provenance)
        assert {k: prov[k] for k in ("tokens_in", "tokens_out", "cost_usd", "seed",
                                     "engine", "policy_hash")} == {
            "tokens_in": 3, "tokens_out": 3, "cost_usd": 0.0, "seed": done.seed,
            "engine": "mock", "policy_hash": run.policy_hash}
        assert sorted(set(prov) - {"finish_reason"}) == sorted(prov)
        assert (done.usage.tokens_in, done.usage.tokens_out) == (3, 3)


def test_the_spec_names_every_step_module() -> None:
    """The guide lists the modules the registry finds [PLACE-5010]."""
    guide = (ROOT / "specs" / "90_adding_a_step_type.md").read_text()
    for cls in discover():
        module = cls.__module__.replace(".", "/") + ".py"
        assert re.search(re.escape(module), guide), module
