"""A Run's lifecycle: closing it, its provenance summary and its run stream
(NERVE-4100, NERVE-4101, NERVE-4103, NERVE-4104).

* :meth:`RunLife.close` moves an ``active`` Run to ``completed``, ``failed`` or
  ``cancelled``. ``completed`` is refused while a Step of the Run is live; ``failed``
  and ``cancelled`` cancel the live Steps (their ``CANCELLED`` message is "run failed"
  or "run cancelled"). Closing again with the same status changes
  nothing; with another status it is ``CONFLICT``. A closed Run refuses new Steps.
* The summary is fixed once the Run is closed and none of its Steps is live: at the
  close, or by the first read after its last Step ended (:meth:`RunLife.finalize`). It
  reads the Run's Steps once (O(its Steps)); every later read is the stored JSON.
* :meth:`RunLife.open_stream` validates a run stream (tenant, cursor) before anything is
  written.
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.errors import Conflict
from contracts.events import TERMINAL_FRAMES, Provenance
from contracts.run_life import RunEndData, RunSummary
from contracts.runs import Run, RunStatus
from orchestrator_core import lookup
from orchestrator_core.canonical import b3, b3_bytes
from orchestrator_core.clock import Clock, iso_utc
from orchestrator_core.eventlog import EventLog
from orchestrator_core.rows import RunRow
from orchestrator_core.run_stream import RunStream
from orchestrator_core.steps.runner import StepTasks
from orchestrator_core.store_base import Store

__all__ = ["RunLife"]

_enc = msgspec.json.Encoder()
_prov = msgspec.json.Decoder(Provenance)
_TERMINAL = frozenset(t.value for t in TERMINAL_FRAMES)
_CANCELS = frozenset({RunStatus.FAILED.value, RunStatus.CANCELLED.value})


class RunLife:
    """Close Runs, summarise them and open their streams.

    Args:
        store: the store.
        log: the event log (run readers are woken through it).
        tasks: the Step runner (a close cancels live Steps through it).
        clock: injected time (``closed_at``).
    """

    def __init__(self, store: Store, log: EventLog, tasks: StepTasks, clock: Clock) -> None:
        self.store = store
        self.log = log
        self.tasks = tasks
        self.clock = clock

    def close(self, run_id: str, status: str, tenant: str | None) -> Run:
        """Close a Run (NERVE-4103).

        Args:
            run_id: the Run.
            status: ``completed``, ``failed`` or ``cancelled``.
            tenant: the caller's tenant (None: the server's own view).

        Returns:
            The Run, closed; with its summary when none of its Steps is live.

        Raises:
            NotFound: no such Run, or another tenant's.
            Conflict: the Run is closed with another status (``data.status``), or
                ``completed`` while Steps are live (``data.live_steps``); both name
                ``data.field`` ``"status"``.
        """
        run = lookup.get_run(self.store, run_id, tenant)
        if run.status is not RunStatus.ACTIVE:
            if run.status.value != status:
                raise Conflict(f"run {run_id} is already {run.status.value}",
                               data={"field": "status", "run_id": run_id,
                                     "status": run.status.value})
            return self.finalize(run_id, tenant)
        live = self.store.live_steps(run_id)
        if live and status not in _CANCELS:
            raise Conflict(f"run {run_id} has {len(live)} live steps; close it completed "
                           "once they have finished, or failed/cancelled to cancel them",
                           data={"field": "status", "run_id": run_id,
                                 "live_steps": len(live)})
        self.store.close_run(run_id, status, iso_utc(self.clock.now()))
        for step_id in live:
            self.tasks.cancel(step_id, reason=f"run {status}")
        self.log.notify_run(run_id)
        return self.finalize(run_id, tenant)

    def finalize(self, run_id: str, tenant: str | None) -> Run:
        """The Run, with its summary computed and kept first if it is closed, has none
        yet and none of its Steps is live (NERVE-4104).

        Raises:
            NotFound: no such Run, or another tenant's.
        """
        run = lookup.get_run(self.store, run_id, tenant)
        if (run.status is RunStatus.ACTIVE or run.summary is not None
                or self.store.live_steps(run_id)):
            return run
        row = self.store.get_run(run_id)
        assert row is not None
        self.store.set_run_summary(run_id, _enc.encode(self._summary(row)).decode())
        return lookup.get_run(self.store, run_id, tenant)

    def end_of(self, run_id: str) -> RunEndData | None:
        """The ``run_end`` data of a Run that is closed with no live Step, else None
        (NERVE-4101)."""
        row = self.store.get_run(run_id)
        if row is None or row.status == RunStatus.ACTIVE.value:
            return None
        if self.store.live_steps(run_id):
            return None
        run = self.finalize(run_id, None)
        return RunEndData(run_id=run_id, status=run.status.value, summary=run.summary)

    def open_stream(self, run_id: str, last_event_id: int | None, heartbeat_s: float,
                    tenant: str | None) -> RunStream:
        """Validate, then return the SSE stream of a Run (NERVE-4100).

        Args:
            run_id: the Run.
            last_event_id: resume after this run position; None: from the start.
            heartbeat_s: idle time before a ``: keep-alive`` comment (s).
            tenant: the caller's tenant.

        Raises:
            NotFound: no such Run, or another tenant's (before the stream starts).
        """
        lookup.get_run(self.store, run_id, tenant)
        return RunStream(self.log, self.store, run_id,
                         -1 if last_event_id is None else last_event_id, heartbeat_s,
                         self.end_of)

    def _summary(self, row: RunRow) -> RunSummary:
        """Summarise a closed Run with no live Step: one read of its Steps, and of each
        one's terminal frame for ``steps_hash``."""
        store = self.store
        by_type: dict[str, dict[str, int]] = {}
        engines: set[str] = set()
        models: set[str] = set()
        hashes: set[str] = set()
        builds: set[str] = set()
        entries: list[list[Any]] = []
        rows = store.summary_rows(row.run_id)
        for token, step_type, input_hash, status, prov_json, model, step_id, last in rows:
            counts = by_type.setdefault(step_type, {})
            counts[status] = counts.get(status, 0) + 1
            prov = _prov.decode(prov_json) if prov_json else None
            if prov is not None and prov.engine is not None:
                engines.add(f"{prov.engine}@{prov.engine_version}")
                if model is not None:
                    models.add(model)
                if prov.model_hash is not None:
                    hashes.add(prov.model_hash)
                if prov.engine_build is not None:
                    builds.add(prov.engine_build)
            frames = store.read_events(step_id, last - 1, 1) if last >= 0 else []
            terminal = (b3_bytes(frames[0][2]) if frames and frames[0][1] in _TERMINAL
                        else None)
            entries.append([token, step_type, input_hash, status, terminal])
        usage = store.run_usage(row.run_id)
        return RunSummary(
            status=row.status, mode=row.mode, seed=row.seed, steps=len(rows),
            steps_by_type={t: dict(sorted(c.items())) for t, c in sorted(by_type.items())},
            tokens_in=usage.tokens_in, tokens_out=usage.tokens_out, cost_usd=usage.cost_usd,
            wall_ms=usage.wall_ms, engines=sorted(engines), models=sorted(models),
            model_hashes=sorted(hashes), engine_builds=sorted(builds),
            steps_hash=b3(entries))
