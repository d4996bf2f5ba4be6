"""Checkpoints and forks (NERVE-4005, NERVE-4008).

A checkpoint stores the interpreter's snapshot together with the server's cursor of the
Run at that moment. The cursor's size does not grow with the Run (NERVE-4008): the
highest Step ordinal (``steps_high_water``), the ordinals of the Steps not finished then
(``steps_unfinished``, at most ``max_active_steps``), the usage, and the Facts high-water
mark, each read through an index. It is content-addressed (``ckp_`` + blake3 of run,
snapshot and cursor) and lives in SQLite, so it survives restarts. It is made by ``POST
/v1/runs/{id}/checkpoint`` or by a ``checkpoint`` Step
(:mod:`orchestrator_core.steps.checkpoint`, which also logs a durable ``checkpoint`` frame
before its ``end``). A snapshot larger than
``max_recorded_value_bytes`` is refused before anything is stored (POLICY-3030).

A Run created with ``from_checkpoint`` forks from it without touching the parent: the
parent's Facts up to the high-water mark are copied into the child, and a Step the child
submits with a client_token the parent had finished by then is served from the parent's
log (matched by type and input hash, like a replay); everything else runs anew.
Checkpoints written before schema v6 hold ``steps_done`` (the finished client_tokens)
instead, and fork exactly as they did.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.checkpoints import Checkpoint, CheckpointCreate
from contracts.errors import InvalidParams, NotFound
from contracts.runs import Run
from orchestrator_core.bounds import oversize
from orchestrator_core.canonical import b3, canonical_json
from orchestrator_core.clock import Clock, iso_utc
from orchestrator_core.config import ServerConfig
from orchestrator_core.lookup import get_run
from orchestrator_core.rows import CheckpointRow, StepRow
from orchestrator_core.store_base import Store

__all__ = ["Checkpoints"]


def _view(row: CheckpointRow) -> Checkpoint:
    return Checkpoint(checkpoint_id=row.checkpoint_id, run_id=row.run_id,
                      step_id=row.step_id, hash=row.hash,
                      snapshot=msgspec.json.decode(row.snapshot),
                      cursor=msgspec.json.decode(row.cursor), ts=row.ts)


class Checkpoints:
    """Checkpoint creation and listing, and fork inheritance.

    Args:
        store: the store.
        clock: injected time (timestamps).
        config: the operator config (``max_recorded_value_bytes``).
    """

    def __init__(self, store: Store, clock: Clock, config: ServerConfig) -> None:
        self.store = store
        self.clock = clock
        self.config = config

    def cursor(self, run_id: str) -> dict[str, Any]:
        """The server's view of a Run now, in O(1) of the Run's length (NERVE-4008).

        Returns:
            ``{"steps_high_water": <highest Step ordinal, -1 for none>,
            "steps_unfinished": [<ordinals of queued or running Steps>],
            "usage": {"tokens_in", "tokens_out", "cost_usd"},
            "facts_high_water": <last Fact seq, -1 for none>}``.
        """
        store = self.store
        usage = store.run_usage(run_id)
        return {"steps_high_water": store.steps_high_water(run_id),
                "steps_unfinished": store.unfinished_ordinals(run_id),
                "usage": {"tokens_in": usage.tokens_in, "tokens_out": usage.tokens_out,
                          "cost_usd": usage.cost_usd},
                "facts_high_water": store.facts_high_water(run_id)}

    def check_snapshot(self, snapshot: Any, field: str) -> None:
        """Refuse a snapshot over ``max_recorded_value_bytes`` (POLICY-3030).

        Raises:
            InvalidParams: ``data``: ``field``, ``reason`` (``size`` or ``depth``) and the
                limit (``limit_bytes`` or ``limit_depth``).
        """
        limit = self.config.max_recorded_value_bytes
        refused = oversize(snapshot, limit)
        if refused is not None:
            bound = (f"{limit} bytes of JSON" if refused["reason"] == "size"
                     else f"{refused['limit_depth']} levels of nesting")
            raise InvalidParams(f"{field} is over the server's bound on recorded values "
                                f"({bound})", data={"field": field, **refused})

    def create(self, run_id: str, body: CheckpointCreate, tenant: str | None,
               step_id: str | None = None) -> tuple[Checkpoint, bool]:
        """Snapshot the interpreter state with the server's cursor (NERVE-4005).

        Returns:
            ``(checkpoint, created)``; the same snapshot at the same cursor is the same
            checkpoint.

        Raises:
            NotFound: no such Run (or another tenant's), or ``body.step_id`` names no
                Step of this Run.
            InvalidParams: the snapshot is over ``max_recorded_value_bytes``
                (``data.field`` ``snapshot``, POLICY-3030).
        """
        get_run(self.store, run_id, tenant)
        if step_id is None:  # a checkpoint Step's snapshot was checked at its admission
            self.check_snapshot(body.snapshot, "snapshot")
            cited = body.step_id
            row_of = self.store.get_step(cited) if cited is not None else None
            if cited is not None and (row_of is None or row_of.run_id != run_id):
                # another Run's or tenant's step answers as an unknown one (NERVE-4051)
                raise NotFound(f"no step {cited}", data={"step_id": cited})
        cursor = self.cursor(run_id)
        digest = b3({"run_id": run_id, "snapshot": body.snapshot, "cursor": cursor})
        row = CheckpointRow(checkpoint_id="ckp_" + digest[3:35], run_id=run_id,
                            step_id=step_id or body.step_id, hash=digest,
                            snapshot=canonical_json(body.snapshot).decode(),
                            cursor=canonical_json(cursor).decode(),
                            ts=iso_utc(self.clock.now()))
        ckp_id = "ckp_" + digest[3:35]
        created = self.store.insert_checkpoint(row)
        stored = self.store.get_checkpoint(ckp_id)
        assert stored is not None
        return _view(stored), created

    def list(self, run_id: str, tenant: str, *, after: str | None = None,
             limit: int = 100) -> tuple[list[Checkpoint], str | None]:
        """One page of a Run's checkpoints, oldest first (NERVE-4008).

        Args:
            run_id: the Run.
            tenant: the caller's tenant.
            after: a checkpoint_id of this Run; the page starts right after it.
            limit: page size, 1..1000.

        Returns:
            ``(page, next_after)``: ``next_after`` is the last checkpoint_id of the page
            when more follow, else None.

        Raises:
            NotFound: no such Run (or another tenant's).
            InvalidParams: ``limit`` out of range, or ``after`` names no checkpoint of
                this Run (``data.field`` names the parameter).
        """
        get_run(self.store, run_id, tenant)
        if not 1 <= limit <= 1000:
            raise InvalidParams("limit must be 1..1000", data={"field": "limit",
                                                               "limit": limit})
        position = 0
        if after is not None:
            found = self.store.checkpoint_position(run_id, after)
            if found is None:
                raise InvalidParams("after must name a checkpoint of this run",
                                    data={"field": "after"})
            position = found
        rows = self.store.list_checkpoints(run_id, position, limit + 1)
        more = len(rows) > limit
        page = [_view(r) for r in rows[:limit]]
        return page, page[-1].checkpoint_id if more else None

    def get(self, checkpoint_id: str, tenant: str) -> Checkpoint:
        """One checkpoint of the tenant. Raises NotFound."""
        row = self.store.get_checkpoint(checkpoint_id)
        if row is not None:
            run = self.store.get_run(row.run_id)
            if run is None or run.tenant != tenant:
                row = None
        if row is None:
            raise NotFound(f"no checkpoint {checkpoint_id}",
                           data={"checkpoint_id": checkpoint_id})
        return _view(row)

    # -- forks -----------------------------------------------------------------------

    def fork_source(self, checkpoint_id: str, flow_id: str, tenant: str) -> Checkpoint:
        """The checkpoint a new Run forks from, checked against the tenant and the Flow.

        Raises:
            NotFound: no such checkpoint for this tenant.
            InvalidParams: the checkpoint belongs to a Run of another Flow.
        """
        ckp = self.get(checkpoint_id, tenant)
        parent = self.store.get_run(ckp.run_id)
        assert parent is not None
        if parent.flow_id != flow_id:
            raise InvalidParams("from_checkpoint must name a checkpoint of a run of this flow",
                                data={"from_checkpoint": checkpoint_id,
                                      "checkpoint_flow_id": parent.flow_id})
        return ckp

    def inherit(self, child_run_id: str, ckp: Checkpoint) -> None:
        """Record the lineage and copy the parent's Facts up to the high-water mark."""
        store = self.store
        store.set_lineage(child_run_id, ckp.run_id, ckp.checkpoint_id)
        high = int(ckp.cursor["facts_high_water"])
        flow_id = get_run(self.store, child_run_id, None).flow_id
        seen = -1
        while seen < high:
            rows = store.list_facts(run_id=ckp.run_id, since_seq=seen, limit=512)
            for row in rows:
                if row.seq > high:
                    return
                store.append_fact(msgspec.structs.replace(
                    row, run_id=child_run_id, flow_id=flow_id,
                    fact_id="fct_" + b3([child_run_id, row.fact_id])[3:27]))
            if not rows:
                return
            seen = rows[-1].seq

    def inherited_step(self, run: Run, client_token: str) -> StepRow | None:
        """The parent's Step a forked Run's submission inherits, if any: one the parent
        had finished at the checkpoint (NERVE-4005, NERVE-4008)."""
        ckp_id = run.lineage.get("from_checkpoint")
        if not ckp_id:
            return None
        row = self.store.get_checkpoint(ckp_id)
        if row is None:
            return None
        step = self.store.get_step_by_token(row.run_id, client_token)
        if step is None:
            return None
        cursor = msgspec.json.decode(row.cursor)
        if "steps_done" in cursor:  # written before schema v6
            return step if client_token in cursor["steps_done"] else None
        ordinal = step.ordinal
        if ordinal > cursor["steps_high_water"] or ordinal in cursor["steps_unfinished"]:
            return None
        return step
