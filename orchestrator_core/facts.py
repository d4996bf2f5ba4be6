"""Facts and gates: append-only typed records of a Run, and ``gate_eval`` over them.

Facts (NERVE-4004) are appended by the interpreter (``POST /v1/runs/{id}/facts``). Each
names a ``schema_uri`` that must resolve to a registered JSON Schema (one the Flow
declares in ``config.fact_schemas``, or the built-in any-object schema) and is validated
before it is stored; an invalid Fact is 400 and nothing is stored. There is no update and
no delete. Each Run's Facts form one total order (``seq`` 0, 1, …, no gaps) because the
append is one SQLite transaction on the event loop's single writer. A Fact naming a live
Step is also appended to that Step's stream as a durable ``fact`` frame.

``gate_eval`` (NERVE-4006) evaluates a JMESPath expression over the Run's Facts and can
wait for new ones up to a deadline; it records whether it passed, the value, and the ids
of the Facts it saw. ``strict_replay`` evaluates it again over exactly those Facts and
compares; ``replay`` serves the recording. The expression is bounded at admission and
evaluated on a work budget in a worker thread (:mod:`orchestrator_core.gates`,
NERVE-4007).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from contracts.errors import Conflict, InvalidParams, NotFound, ReplayDiverged
from contracts.events import FrameType, sse_comment, sse_frame
from contracts.facts import BUILTIN_FACT_SCHEMA, Fact, FactCreate
from contracts.runs import Run, RunStatus
from contracts.steps import GateEvalSubmit, Step
from orchestrator_core.canonical import canonical_json, new_id
from orchestrator_core.clock import iso_utc
from orchestrator_core.executor import EffectJob
from orchestrator_core.gates import GateExpression, compile_gate, evaluate_gate
from orchestrator_core.host import StepHost
from orchestrator_core.rows import FactRow, StepRow
from orchestrator_core.schema_guard import check_schema, violations

__all__ = ["Facts", "check_fact_schemas"]

_BUILTIN = {BUILTIN_FACT_SCHEMA: {"type": "object"}}
_enc = msgspec.json.Encoder()


def check_fact_schemas(config: dict[str, Any]) -> None:
    """Refuse a Flow whose ``config.fact_schemas`` is not ``{uri: valid JSON Schema}``
    (the limits of POLICY-3020, patterns on RE2).

    Raises:
        InvalidParams: names the offending uri; ``data.field`` is
            ``config.fact_schemas.<uri>`` and ``data.path`` the pointer inside it.
    """
    schemas = config.get("fact_schemas", {})
    if not isinstance(schemas, dict):
        raise InvalidParams("config.fact_schemas must map schema URIs to JSON Schemas",
                            data={"field": "config.fact_schemas"})
    for uri, schema in schemas.items():
        check_schema(schema, field=f"config.fact_schemas.{uri}", label=f"fact schema {uri}",
                     extra={"uri": uri})


def _fact(row: FactRow) -> Fact:
    return Fact(fact_id=row.fact_id, run_id=row.run_id, seq=row.seq, type=row.type,
                schema_uri=row.schema_uri, data=msgspec.json.decode(row.data),
                emitted_by_step=row.emitted_by_step, ts=row.ts)


class Facts:
    """Fact appends, queries and streams, and ``gate_eval`` Steps.

    Args:
        orch: the orchestrator (store, event log, clock, executor).
    """

    def __init__(self, orch: StepHost) -> None:
        self.orch = orch
        self._changed: dict[str, anyio.Event] = {}

    # -- appends and queries ---------------------------------------------------------

    def append(self, run_id: str, body: FactCreate, tenant: str) -> Fact:
        """Validate and append one Fact to a Run (NERVE-4004).

        Raises:
            NotFound: no such Run (or another tenant's), or no such Step in it.
            Conflict: the Run is cancelled.
            InvalidParams: the schema_uri does not resolve, or the data does not validate.
        """
        run = self.orch.get_run(run_id, tenant)
        if run.status is not RunStatus.ACTIVE:
            raise Conflict(f"run {run_id} is {run.status.value}; it accepts no facts",
                           data={"run_id": run_id})
        flow = self.orch.get_flow(run.flow_id, None)
        schemas = {**_BUILTIN, **flow.config.get("fact_schemas", {})}
        schema = schemas.get(body.schema_uri)
        if schema is None:
            raise InvalidParams(f"schema_uri {body.schema_uri!r} is not registered",
                                data={"schema_uri": body.schema_uri,
                                      "registered": sorted(schemas)})
        errors = violations(schema, body.data)
        if errors:
            raise InvalidParams("fact data does not match its schema",
                                data={"schema_uri": body.schema_uri, "errors": errors[:20]})
        if body.step_id is not None:  # a step of another Run (or tenant) is as unknown
            step = self.orch.store.get_step(body.step_id)
            if step is None or step.run_id != run_id:
                raise NotFound(f"no step {body.step_id}", data={"step_id": body.step_id})
        row = FactRow(fact_id=new_id("fct"), run_id=run_id, flow_id=run.flow_id, seq=-1,
                      type=body.type, schema_uri=body.schema_uri,
                      data=canonical_json(body.data).decode(), emitted_by_step=body.step_id,
                      ts=iso_utc(self.orch.clock.now()))
        row = msgspec.structs.replace(row, seq=self.orch.store.append_fact(row))
        fact = _fact(row)
        if body.step_id is not None and self.orch.log.is_live(body.step_id):
            self.orch.log.append(body.step_id, fact)
        self._wake(run_id)
        return fact

    def list_run(self, run_id: str, tenant: str, *, fact_type: str | None = None,
                 step_id: str | None = None, since_seq: int = -1,
                 limit: int = 1000) -> list[Fact]:
        """A Run's Facts in order, filtered by type, emitting step and ``seq > since_seq``."""
        self.orch.get_run(run_id, tenant)
        return [_fact(r) for r in self.orch.store.list_facts(
            run_id=run_id, fact_type=fact_type, step_id=step_id, since_seq=since_seq,
            limit=limit)]

    def list_flow(self, flow_id: str, tenant: str, *, fact_type: str | None = None,
                  limit: int = 1000) -> list[Fact]:
        """Facts of every Run of a Flow, by Run then ``seq``."""
        self.orch.get_flow(flow_id, tenant)
        return [_fact(r) for r in self.orch.store.list_facts(
            flow_id=flow_id, fact_type=fact_type, limit=limit)]

    # -- change notification and the Run-level stream ----------------------------------

    def _wake(self, run_id: str) -> None:
        event = self._changed.pop(run_id, None)
        if event is not None:
            event.set()

    async def wait_for_new(self, run_id: str) -> None:
        """Sleep until the next Fact of this Run is appended."""
        await self._changed.setdefault(run_id, anyio.Event()).wait()

    def open_stream(self, run_id: str, tenant: str, last_event_id: int | None) -> \
            AsyncIterator[bytes]:
        """SSE stream of a Run's Facts (``id:`` = seq), resuming after ``last_event_id``.

        Raises:
            NotFound: before the stream starts.
        """
        self.orch.get_run(run_id, tenant)
        return self._stream(run_id, -1 if last_event_id is None else last_event_id)

    async def _stream(self, run_id: str, cursor: int) -> AsyncIterator[bytes]:
        heartbeat_s = self.orch.config.heartbeat_ms / 1000.0
        while True:
            rows = self.orch.store.list_facts(run_id=run_id, since_seq=cursor, limit=512)
            if rows:
                cursor = rows[-1].seq
                yield b"".join(sse_frame(r.seq, FrameType.FACT, _enc.encode(_fact(r)))
                               for r in rows)
                continue
            with self.orch.clock.move_on_after(heartbeat_s) as idle:
                await self.wait_for_new(run_id)
            if idle.cancelled_caught:
                yield sse_comment("keep-alive")

    # -- gate_eval ---------------------------------------------------------------------

    def submit_gate(self, run: Run, body: GateEvalSubmit, input_value: Any, input_hash: str,
                    recorded: StepRow | None = None) -> Step:
        """Admit a ``gate_eval``; in ``strict_replay`` (``recorded`` given) it re-evaluates
        over the recorded Facts and must agree with the recording.

        Raises:
            InvalidParams: the expression does not compile or is over the expression
                limits (``data.field`` ``input.expression``, NERVE-4007).
        """
        gate = compile_gate(body.input.expression)
        step_id = self.orch.insert_step(run, body, "gate_eval", input_value, input_hash, None,
                                        recorded.step_id if recorded else None)
        run_id, wait_s = run.run_id, body.input.wait_ms / 1000.0
        orch = self.orch
        cfg = orch.config

        async def evaluate(rows: list[FactRow]) -> tuple[list[str], bool, Any]:
            """``(fact ids, passed, value)``, evaluated in a worker thread."""
            return await anyio.to_thread.run_sync(_evaluate, gate, rows, cfg.max_gate_work,
                                                  cfg.max_recorded_value_bytes)

        async def live() -> Any:
            deadline = orch.clock.monotonic() + wait_s
            while True:
                rows = orch.store.list_facts(run_id=run_id, limit=100_000)
                seen, passed, value = await evaluate(rows)
                left = deadline - orch.clock.monotonic()
                if passed or left <= 0:
                    return {"passed": passed, "value": value, "facts_seen": seen,
                            "high_water": rows[-1].seq if rows else -1}
                with orch.clock.move_on_after(left):
                    await self.wait_for_new(run_id)

        async def again() -> Any:
            assert recorded is not None
            end = next(msgspec.json.decode(d) for _s, t, d in
                       orch.store.read_events(recorded.step_id, -1) if t == "end")
            want = end["output"]
            rows = orch.store.list_facts(fact_ids=want["facts_seen"], limit=100_000)
            _seen, passed, value = await evaluate(rows)
            if (passed, value) != (want["passed"], want["value"]):
                raise ReplayDiverged(run_id=run_id, step_id=step_id, index=0,
                                     expected={"passed": want["passed"], "value": want["value"]},
                                     actual={"passed": passed, "value": value})
            return want

        self.orch.spawn(self.orch.executor.run_effect, EffectJob(
            step_id=step_id, run_id=run_id, step_type="gate_eval", executor="gate",
            call=again if recorded is not None else live, breaker=None, output_schema=None,
            submitted_at=self.orch.clock.monotonic()))
        return self.orch.get_step(step_id, None)


def _evaluate(gate: GateExpression, rows: list[FactRow], max_work: int,
              max_value_bytes: int) -> tuple[list[str], bool, Any]:
    """Decode the Facts and evaluate the gate over them (pure; runs in a worker thread)."""
    facts = [msgspec.to_builtins(_fact(r)) for r in rows]
    passed, value = evaluate_gate(gate, facts, max_work=max_work,
                                  max_value_bytes=max_value_bytes)
    return [f["fact_id"] for f in facts], passed, value
