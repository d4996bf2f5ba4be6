"""Facts and gates: append-only typed records of a Run, and ``gate_eval`` over them.

Facts (NERVE-4004) are appended by the interpreter (``POST /v1/runs/{id}/facts``). Each
names a ``schema_uri`` that must resolve to a registered JSON Schema (one the Flow
declares in ``config.fact_schemas``, or the built-in any-object schema) and is validated
before it is stored; an invalid Fact is 400 and nothing is stored. There is no update and
no delete. Each Run's Facts form one total order (``seq`` 0, 1, …, no gaps) because the
append is one SQLite transaction on the event loop's single writer. A Fact naming a live
Step is also appended to that Step's stream as a durable ``fact`` frame.

The ``gate_eval`` Step (NERVE-4006) that evaluates an expression over them, and waits for
new ones through :meth:`Facts.wait_for_new`, is :mod:`orchestrator_core.steps.gate_eval`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from contracts.errors import Conflict, InvalidParams, NotFound
from contracts.events import FrameType, sse_comment, sse_frame
from contracts.facts import BUILTIN_FACT_SCHEMA, Fact, FactCreate
from contracts.runs import RunStatus
from orchestrator_core.canonical import canonical_json, new_id
from orchestrator_core.clock import Clock, iso_utc
from orchestrator_core.config import ServerConfig
from orchestrator_core.eventlog import EventLog
from orchestrator_core.lookup import get_flow, get_run
from orchestrator_core.rows import FactRow
from orchestrator_core.schema_guard import check_schema, violations
from orchestrator_core.store_base import Store

__all__ = ["MAX_FLOW_FACTS_LIMIT", "Facts", "check_fact_schemas", "fact_of"]

MAX_FLOW_FACTS_LIMIT = 10_000
"""The largest page of a Flow's Facts (NERVE-4075)."""

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


def fact_of(row: FactRow) -> Fact:
    """A ``facts`` row as a :class:`Fact`."""
    return Fact(fact_id=row.fact_id, run_id=row.run_id, seq=row.seq, type=row.type,
                schema_uri=row.schema_uri, data=msgspec.json.decode(row.data),
                emitted_by_step=row.emitted_by_step, ts=row.ts)


class Facts:
    """Fact appends, queries and streams, and the wake-up of Steps waiting for Facts.

    Args:
        store: the store.
        log: the event log (a Fact naming a live Step is also one of its frames).
        clock: injected time (timestamps, the stream's keep-alive).
        config: the operator config (``heartbeat_ms``).
    """

    def __init__(self, store: Store, log: EventLog, clock: Clock,
                 config: ServerConfig) -> None:
        self.store = store
        self.log = log
        self.clock = clock
        self.config = config
        self._changed: dict[str, anyio.Event] = {}

    # -- appends and queries ---------------------------------------------------------

    def append(self, run_id: str, body: FactCreate, tenant: str) -> Fact:
        """Validate and append one Fact to a Run (NERVE-4004).

        Raises:
            NotFound: no such Run (or another tenant's), or no such Step in it.
            Conflict: the Run is cancelled.
            InvalidParams: the schema_uri does not resolve, or the data does not validate.
        """
        run = get_run(self.store, run_id, tenant)
        if run.status is not RunStatus.ACTIVE:
            raise Conflict(f"run {run_id} is {run.status.value}; it accepts no facts",
                           data={"run_id": run_id})
        flow = get_flow(self.store, run.flow_id, None)
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
            step = self.store.get_step(body.step_id)
            if step is None or step.run_id != run_id:
                raise NotFound(f"no step {body.step_id}", data={"step_id": body.step_id})
        row = FactRow(fact_id=new_id("fct"), run_id=run_id, flow_id=run.flow_id, seq=-1,
                      type=body.type, schema_uri=body.schema_uri,
                      data=canonical_json(body.data).decode(), emitted_by_step=body.step_id,
                      ts=iso_utc(self.clock.now()))
        row = msgspec.structs.replace(row, seq=self.store.append_fact(row))
        fact = fact_of(row)
        if body.step_id is not None and self.log.is_live(body.step_id):
            self.log.append(body.step_id, fact)
        self._wake(run_id)
        return fact

    def list_run(self, run_id: str, tenant: str, *, fact_type: str | None = None,
                 step_id: str | None = None, since_seq: int = -1,
                 limit: int = 1000) -> list[Fact]:
        """A Run's Facts in order, filtered by type, emitting step and ``seq > since_seq``."""
        get_run(self.store, run_id, tenant)
        return [fact_of(r) for r in self.store.list_facts(
            run_id=run_id, fact_type=fact_type, step_id=step_id, since_seq=since_seq,
            limit=limit)]

    def get(self, fact_id: str, tenant: str) -> Fact:
        """One Fact of the tenant, by id (NERVE-4074).

        Raises:
            NotFound: no such Fact, or another tenant's (answered alike, NERVE-4051).
        """
        rows = self.store.list_facts(fact_ids=[fact_id], limit=1)
        run = self.store.get_run(rows[0].run_id) if rows else None
        if run is None or run.tenant != tenant:
            raise NotFound(f"no fact {fact_id}", data={"fact_id": fact_id})
        return fact_of(rows[0])

    def list_flow(self, flow_id: str, tenant: str, *, fact_type: str | None = None,
                  after: str | None = None,
                  limit: int = 1000) -> tuple[list[Fact], str | None]:
        """One page of the Facts of every Run of a Flow, in append order (NERVE-4075).

        Args:
            flow_id: the Flow.
            tenant: the caller's tenant.
            fact_type: only Facts of this ``type`` when given.
            after: a fact_id of this Flow; the page starts right after it.
            limit: page size, 1..10000.

        Returns:
            ``(page, next_after)``: ``next_after`` is the last fact_id of the page when
            more follow, else None.

        Raises:
            NotFound: no such Flow (or another tenant's).
            InvalidParams: ``limit`` out of range, or ``after`` names no Fact of this
                Flow (``data.field`` names the parameter).
        """
        get_flow(self.store, flow_id, tenant)
        if not 1 <= limit <= MAX_FLOW_FACTS_LIMIT:
            raise InvalidParams(f"limit must be 1..{MAX_FLOW_FACTS_LIMIT}",
                                data={"field": "limit", "limit": limit})
        position = 0
        if after is not None:
            found = self.store.fact_position(flow_id, after)
            if found is None:
                raise InvalidParams("after must name a fact of this flow",
                                    data={"field": "after"})
            position = found
        rows = self.store.list_flow_facts(flow_id, fact_type=fact_type, after=position,
                                          limit=limit + 1)
        page = [fact_of(r) for r in rows[:limit]]
        return page, page[-1].fact_id if len(rows) > limit else None

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
        get_run(self.store, run_id, tenant)
        return self._stream(run_id, -1 if last_event_id is None else last_event_id)

    async def _stream(self, run_id: str, cursor: int) -> AsyncIterator[bytes]:
        heartbeat_s = self.config.heartbeat_ms / 1000.0
        while True:
            rows = self.store.list_facts(run_id=run_id, since_seq=cursor, limit=512)
            if rows:
                cursor = rows[-1].seq
                yield b"".join(sse_frame(r.seq, FrameType.FACT, _enc.encode(fact_of(r)))
                               for r in rows)
                continue
            with self.clock.move_on_after(heartbeat_s) as idle:
                await self.wait_for_new(run_id)
            if idle.cancelled_caught:
                yield sse_comment("keep-alive")
