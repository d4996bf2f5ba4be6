"""Checkpoints and forks (NERVE-4005).

A checkpoint stores the interpreter's snapshot together with the server's cursor of the
Run at that moment: the client_tokens of its finished Steps, its usage, and its Facts
high-water mark. It is content-addressed (``ckp_`` + blake3 of run, snapshot and cursor)
and lives in SQLite, so it survives restarts. It is made by ``POST
/v1/runs/{id}/checkpoint`` or by a ``checkpoint`` Step (which also logs a durable
``checkpoint`` frame before its ``end``).

A Run created with ``from_checkpoint`` forks from it without touching the parent: the
parent's Facts up to the high-water mark are copied into the child, and a Step the child
submits with a client_token the parent had finished by then is served from the parent's
log (matched by type and input hash, like a replay); everything else runs anew.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from contracts.checkpoints import Checkpoint, CheckpointCreate
from contracts.errors import InvalidParams, NotFound
from contracts.events import FrameType
from contracts.runs import Run
from contracts.steps import CheckpointSubmit, Step, StepStatus
from orchestrator_core.canonical import b3, canonical_json
from orchestrator_core.clock import iso_utc
from orchestrator_core.executor import EffectJob

if TYPE_CHECKING:
    from orchestrator_core.service import Orchestrator

__all__ = ["Checkpoints"]

_enc = msgspec.json.Encoder()


def _view(row: dict[str, Any]) -> Checkpoint:
    return Checkpoint(checkpoint_id=row["checkpoint_id"], run_id=row["run_id"],
                      step_id=row["step_id"], hash=row["hash"],
                      snapshot=msgspec.json.decode(row["snapshot"]),
                      cursor=msgspec.json.decode(row["cursor"]), ts=row["ts"])


class Checkpoints:
    """Checkpoint creation, listing, ``checkpoint`` Steps and fork inheritance.

    Args:
        orch: the orchestrator (store, event log, executor, clock).
    """

    def __init__(self, orch: Orchestrator) -> None:
        self.orch = orch

    def cursor(self, run_id: str) -> dict[str, Any]:
        """The server's view of a Run now: finished Steps, usage, Facts high-water mark."""
        store = self.orch.store
        done = [r["client_token"] for r in store.list_steps(run_id)
                if StepStatus(r["status"]).terminal]
        usage = store.run_usage(run_id)
        facts = store.list_facts(run_id=run_id, limit=1_000_000)
        return {"steps_done": done,
                "usage": {k: usage[k] for k in ("tokens_in", "tokens_out", "cost_usd")},
                "facts_high_water": facts[-1]["seq"] if facts else -1}

    def create(self, run_id: str, body: CheckpointCreate, tenant: str | None,
               step_id: str | None = None) -> tuple[Checkpoint, bool]:
        """Snapshot the interpreter state with the server's cursor (NERVE-4005).

        Returns:
            ``(checkpoint, created)``; the same snapshot at the same cursor is the same
            checkpoint.

        Raises:
            NotFound: no such Run (or another tenant's).
        """
        self.orch.get_run(run_id, tenant)
        cursor = self.cursor(run_id)
        digest = b3({"run_id": run_id, "snapshot": body.snapshot, "cursor": cursor})
        row = {"checkpoint_id": "ckp_" + digest[3:35], "run_id": run_id,
               "step_id": step_id or body.step_id, "hash": digest,
               "snapshot": canonical_json(body.snapshot).decode(),
               "cursor": canonical_json(cursor).decode(),
               "ts": iso_utc(self.orch.clock.now())}
        ckp_id = "ckp_" + digest[3:35]
        created = self.orch.store.insert_checkpoint(row)
        stored = self.orch.store.get_checkpoint(ckp_id)
        assert stored is not None
        return _view(stored), created

    def list(self, run_id: str, tenant: str) -> list[Checkpoint]:
        """A Run's checkpoints, oldest first."""
        self.orch.get_run(run_id, tenant)
        return [_view(r) for r in self.orch.store.list_checkpoints(run_id)]

    def get(self, checkpoint_id: str, tenant: str) -> Checkpoint:
        """One checkpoint of the tenant. Raises NotFound."""
        row = self.orch.store.get_checkpoint(checkpoint_id)
        if row is not None:
            run = self.orch.store.get_run(row["run_id"])
            if run is None or run["tenant"] != tenant:
                row = None
        if row is None:
            raise NotFound(f"no checkpoint {checkpoint_id}",
                           data={"checkpoint_id": checkpoint_id})
        return _view(row)

    # -- the checkpoint Step -------------------------------------------------------------

    def submit_step(self, run: Run, body: CheckpointSubmit, input_value: Any,
                    input_hash: str) -> Step:
        """Admit a ``checkpoint`` Step: it stores the checkpoint, logs a ``checkpoint``
        frame, and ends with ``{checkpoint_id, hash}``."""
        step_id = self.orch.insert_step(run, body, "checkpoint", input_value, input_hash,
                                        None, None)
        snapshot = body.input.snapshot

        async def call() -> Any:
            ckp, _created = self.create(run.run_id, CheckpointCreate(snapshot=snapshot), None,
                                        step_id=step_id)
            out = {"checkpoint_id": ckp.checkpoint_id, "hash": ckp.hash}
            self.orch.log.append(step_id, FrameType.CHECKPOINT, _enc.encode(out))
            return out

        self.orch.spawn(self.orch.executor.run_effect, EffectJob(
            step_id=step_id, run_id=run.run_id, step_type="checkpoint", executor="checkpoint",
            call=call, breaker=None, output_schema=None,
            submitted_at=self.orch.clock.monotonic()))
        return self.orch.get_step(step_id, None)

    # -- forks -----------------------------------------------------------------------

    def fork_source(self, checkpoint_id: str, flow_id: str, tenant: str) -> Checkpoint:
        """The checkpoint a new Run forks from, checked against the tenant and the Flow.

        Raises:
            NotFound: no such checkpoint for this tenant.
            InvalidParams: the checkpoint belongs to a Run of another Flow.
        """
        ckp = self.get(checkpoint_id, tenant)
        parent = self.orch.store.get_run(ckp.run_id)
        assert parent is not None
        if parent["flow_id"] != flow_id:
            raise InvalidParams("from_checkpoint must name a checkpoint of a run of this flow",
                                data={"from_checkpoint": checkpoint_id,
                                      "checkpoint_flow_id": parent["flow_id"]})
        return ckp

    def inherit(self, child_run_id: str, ckp: Checkpoint) -> None:
        """Record the lineage and copy the parent's Facts up to the high-water mark."""
        store = self.orch.store
        store.set_lineage(child_run_id, ckp.run_id, ckp.checkpoint_id)
        high = int(ckp.cursor["facts_high_water"])
        flow_id = self.orch.get_run(child_run_id, None).flow_id
        for row in store.list_facts(run_id=ckp.run_id, limit=1_000_000):
            if row["seq"] > high:
                break
            store.append_fact({**row, "fact_id": "fct_" + b3([child_run_id, row["fact_id"]])[3:27],
                               "run_id": child_run_id, "flow_id": flow_id})

    def inherited_step(self, run: Run, client_token: str) -> dict[str, Any] | None:
        """The parent's finished Step a forked Run's submission inherits, if any."""
        ckp_id = run.lineage.get("from_checkpoint")
        if not ckp_id:
            return None
        row = self.orch.store.get_checkpoint(ckp_id)
        if row is None or client_token not in msgspec.json.decode(row["cursor"])["steps_done"]:
            return None
        return self.orch.store.get_step_by_token(row["run_id"], client_token)
