"""The store seam: the one protocol the core is typed against (PLACE-5008).

Every module of the core reaches durable state through :class:`Store` and the typed rows
of :mod:`orchestrator_core.rows`; none of them names a backend or a database driver.
:class:`orchestrator_core.store.SqliteStore` is the embedded backend, and only the
composition root (``Orchestrator.running``) constructs it. A PostgreSQL backend implements
the same methods with the same guarantees:

* every method runs on the event-loop thread and returns when its write is durable
  (committed), so callers never await the store;
* :meth:`Store.commit_events` writes frames and Step changes atomically, and
  :meth:`Store.append_fact` assigns Fact numbers atomically, with no gap;
* the idempotency key ``(run_id, client_token, attempt)`` maps to at most one Step, ever
  (NERVE-4105).

Ids are opaque strings; units are tokens, USD and milliseconds. A method that finds
nothing returns None (or an empty list); the constraint errors listed are the backend's
own (``sqlite3.IntegrityError`` for the embedded store).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from orchestrator_core.rows import (
    CheckpointRow,
    EventRead,
    EventRow,
    FactRow,
    FlowRow,
    LlmJobRow,
    RunRow,
    RunUsage,
    StepRow,
    StepUpdate,
)
from orchestrator_core.store_runs import RunLogEntry, SummaryRow

__all__ = ["Store"]


class Store(Protocol):
    """Flows, Runs, Steps, the event log, Facts, checkpoints and engine builds."""

    # -- flows (NERVE-4001, NERVE-4048) --------------------------------------------------

    def insert_flow(self, row: FlowRow) -> bool:
        """Store a Flow unless its tenant already has one with its hash.

        Returns:
            True when the row was created, False when the hash existed.
        """
        ...

    def get_flow(self, flow_id: str) -> FlowRow | None:
        """The Flow by its flow_id, or by an id it had before it was re-addressed
        (NERVE-4048), of any tenant (the caller checks the tenant); else None."""
        ...

    def get_flow_by_hash(self, tenant: str, flow_hash: str) -> FlowRow | None:
        """The tenant's Flow with this ``b3:<hex>`` content hash, or a hash it had before
        it was re-addressed (NERVE-4048); else None."""
        ...

    # -- runs (NERVE-4002, NERVE-4005) ---------------------------------------------------

    def insert_run(self, row: RunRow) -> None:
        """Store a new Run (its lineage is set later by :meth:`set_lineage`).

        Raises:
            the backend's integrity error: the run_id exists or the flow_id does not.
        """
        ...

    def get_run(self, run_id: str) -> RunRow | None:
        """The Run of any tenant (the caller checks the tenant), or None."""
        ...

    def set_run_status(self, run_id: str, status: str) -> None:
        """Change a Run's status (``active`` -> ``cancelled``); no-op for no such Run."""
        ...

    def run_usage(self, run_id: str) -> RunUsage:
        """Sums over the Run's Steps: tokens, USD, wall ms, and Step counts by status
        (all zero, ``{}`` counts, for a Run with no Steps; statuses in name order).

        In O(1) of the Run's length and of the store (NERVE-4042): the backend keeps the
        sums as counters, changed in the transaction of each Step insert or update that
        changes them, so that after any crash they equal a recomputation.
        """
        ...

    def child_runs(self, run_id: str) -> list[str]:
        """The run_ids of the Runs forked from this Run's checkpoints, oldest first (an
        index lookup, NERVE-4042)."""
        ...

    def set_lineage(self, run_id: str, parent_run_id: str, checkpoint_id: str) -> None:
        """Record which Run and checkpoint a forked Run came from."""
        ...

    # -- engine builds (NERVE-4022) ------------------------------------------------------

    def record_engine_build(self, fingerprint: str, settings_json: str) -> None:
        """Remember the settings JSON behind a build fingerprint (first writer wins)."""
        ...

    def engine_build(self, fingerprint: str) -> str | None:
        """The settings JSON recorded for a build fingerprint, or None."""
        ...

    # -- rendered prompts (NERVE-4091) ---------------------------------------------------

    def record_prompt_text(self, text_hash: str, text: str) -> None:
        """Keep the exact text an engine was sent under ``text_hash`` (``b3:<hex>`` of
        its UTF-8 bytes); first writer wins. Durable on return."""
        ...

    def prompt_text(self, text_hash: str) -> str | None:
        """The text kept under ``text_hash``, or None."""
        ...

    # -- the exact-match cache (REC-7102) ------------------------------------------------

    def cached_step(self, tenant: str, cache_key: str) -> StepRow | None:
        """The earliest succeeded Step of ``tenant`` stored with ``cache_key``
        (``StepRow.cache_key``), or None; an indexed lookup, never a scan."""
        ...

    # -- steps (NERVE-4003, NERVE-4008, NERVE-4040) --------------------------------------

    def insert_step(self, row: StepRow) -> bool:
        """Store a Step, claiming its ``(run_id, client_token)`` key, with the next
        ordinal of its Run (``row.ordinal`` is ignored).

        Returns:
            False when the key is already taken (nothing is written; the caller reads
            the existing Step with :meth:`get_step_by_token`).
        """
        ...

    def last_step(self, run_id: str, step_type: str, status: str) -> StepRow | None:
        """The Run's latest Step (highest ordinal) of this type and status, or None; an
        index lookup that does not visit the Run's Steps of other types (NERVE-4042)."""
        ...

    def get_step(self, step_id: str) -> StepRow | None:
        """The Step, or None."""
        ...

    def get_step_by_token(self, run_id: str, client_token: str) -> StepRow | None:
        """The latest attempt of a Run's client_token (NERVE-4105), or None."""
        ...

    def list_steps(self, run_id: str) -> list[StepRow]:
        """The Run's Steps in creation order."""
        ...

    def unfinished_steps(self) -> list[StepRow]:
        """Every Step left ``queued`` or ``running`` (after a crash), oldest first."""
        ...

    def steps_high_water(self, run_id: str) -> int:
        """The highest ordinal of the Run's Steps, -1 when it has none (an index lookup,
        NERVE-4008)."""
        ...

    def unfinished_ordinals(self, run_id: str) -> list[int]:
        """Ordinals of the Run's ``queued`` or ``running`` Steps, ascending, read without
        visiting its finished ones (NERVE-4008)."""
        ...

    # -- the event log (STREAM-2000) -----------------------------------------------------

    def commit_events(self, rows: Sequence[EventRow], updates: Sequence[StepUpdate]) -> None:
        """Append frames and apply Step column changes in one atomic commit.

        Args:
            rows: ``(step_id, seq, run_id, type, data)`` frames, any order.
            updates: ``(step_id, {column: value})`` changes, applied in order; the
                columns must be in :data:`orchestrator_core.rows.STEP_UPDATABLE`.

        Raises:
            ValueError: an update names another column (nothing is written).
            the backend's integrity error: a frame's ``(step_id, seq)`` exists, or its
                Step does not (nothing is written).
        """
        ...

    def read_events(self, step_id: str, after_seq: int,
                    limit: int = 100_000) -> list[EventRead]:
        """The Step's committed frames with ``seq > after_seq``, ascending, at most
        ``limit``: ``(seq, type, data)`` with ``data`` the stored bytes exactly. For a
        Step served by reference (its row's ``frames_of``), the frames of the Step it
        names (NERVE-4025)."""
        ...

    def max_seq(self, step_id: str) -> int:
        """The Step's highest committed seq (of the Step it names, for one served by
        reference), -1 when it has none."""
        ...

    def insert_served(self, row: StepRow, holder: str) -> tuple[bool, str]:
        """Insert a Step served by reference (``row.frames_of``, ``row.frames_hash``) and,
        atomically with it, keep ``row.frames_hash`` on ``holder`` (the Step whose rows
        hold the frames) unless it keeps one already (first writer wins; NERVE-4025).
        Durable on return.

        Returns:
            ``(created, kept)``, ``kept`` the hash ``holder`` keeps now. When ``kept`` is
            not ``row.frames_hash`` nothing is inserted and ``created`` is False;
            ``created`` is also False when the ``(run_id, client_token)`` key is taken.
        """
        ...

    # -- facts (NERVE-4004, NERVE-4006) --------------------------------------------------

    def append_fact(self, row: FactRow) -> int:
        """Append a Fact at the end of its Run's order (``row.seq`` is ignored).

        Returns:
            The Fact's seq: 0 for the Run's first, then 1, 2, ... with no gap.
        """
        ...

    def facts_high_water(self, run_id: str) -> int:
        """The Run's last Fact seq, -1 when it has none (an index lookup)."""
        ...

    def list_facts(self, *, run_id: str | None = None, flow_id: str | None = None,
                   fact_type: str | None = None, step_id: str | None = None,
                   since_seq: int = -1, limit: int = 1000,
                   fact_ids: list[str] | None = None) -> list[FactRow]:
        """The Facts matching every filter given, ordered by Run then seq, at most
        ``limit``.

        Args:
            run_id, flow_id, fact_type: equal to these.
            step_id: emitted by this Step.
            since_seq: ``seq > since_seq``.
            limit: the most rows returned.
            fact_ids: one of these ids.
        """
        ...

    # -- checkpoints (NERVE-4005, NERVE-4008) --------------------------------------------

    def insert_checkpoint(self, row: CheckpointRow) -> bool:
        """Store a checkpoint unless its content address exists.

        Returns:
            True when it was created.
        """
        ...

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        """The checkpoint of any tenant (the caller checks the tenant), or None."""
        ...

    def checkpoint_position(self, run_id: str, checkpoint_id: str) -> int | None:
        """An opaque number that increases with creation order, for a checkpoint of this
        Run; None when the Run has no such checkpoint."""
        ...

    def list_checkpoints(self, run_id: str, after: int = 0,
                         limit: int = 1000) -> list[CheckpointRow]:
        """A page of the Run's checkpoints, oldest first, after position ``after``
        (0: from the first; else a :meth:`checkpoint_position`)."""
        ...

    # -- navigation lists (NERVE-4061) ---------------------------------------------------

    def flow_position(self, tenant: str, flow_id: str) -> int | None:
        """An opaque number that increases with creation order, for a Flow of this
        tenant; None when the tenant has no such Flow."""
        ...

    def list_flows(self, tenant: str, after: int = 0, limit: int = 100) -> list[FlowRow]:
        """A page of the tenant's Flows, oldest first, after position ``after`` (0: from
        the first; else a :meth:`flow_position`); one index range read."""
        ...

    def run_position(self, flow_id: str, run_id: str) -> int | None:
        """An opaque number that increases with creation order, for a Run of this Flow;
        None when the Flow has no such Run."""
        ...

    def list_runs(self, flow_id: str, *, mode: str | None = None, status: str | None = None,
                  label: tuple[str, str] | None = None, after: int = 0,
                  limit: int = 100) -> list[RunRow]:
        """A page of the Flow's Runs equal to every filter given (``label``: a
        ``(key, value)`` pair of the Run's labels), oldest first, after position
        ``after`` (0: from the first; else a :meth:`run_position`); one index range
        read."""
        ...

    def tenant_run_position(self, tenant: str, run_id: str) -> int | None:
        """An opaque number that increases with creation order, for a Run of this
        tenant; None when the tenant has no such Run (REC-7051)."""
        ...

    def list_tenant_runs(self, tenant: str, *, mode: str | None = None,
                         status: str | None = None, label: tuple[str, str] | None = None,
                         after: int = 0, limit: int = 100) -> list[RunRow]:
        """A page of the tenant's Runs of every Flow equal to every filter given, oldest
        first, after position ``after`` (0: from the first; else a
        :meth:`tenant_run_position`); one index range read (REC-7051)."""
        ...

    def list_steps_page(self, run_id: str, after: int = -1, limit: int = 100) -> list[StepRow]:
        """A page of the Run's Steps in submission order: ordinals above ``after`` (-1:
        from the first), ascending; one index range read."""
        ...

    def fact_position(self, flow_id: str, fact_id: str) -> int | None:
        """An opaque number that increases with append order, for a Fact of this Flow;
        None when the Flow has no such Fact."""
        ...

    def list_flow_facts(self, flow_id: str, *, fact_type: str | None = None, after: int = 0,
                        limit: int = 1000) -> list[FactRow]:
        """A page of the Flow's Facts (of ``fact_type`` when given) in append order, after
        position ``after`` (0: from the first; else a :meth:`fact_position`)."""
        ...

    # -- LLM jobs (NERVE-4083, NERVE-4086) ----------------------------------------------

    def insert_llm_job(self, row: LlmJobRow,
                       blobs: Sequence[tuple[str, bytes]] = ()) -> bool:
        """Store a job record and, in the same transaction, each ``(sha256 hex, bytes)``
        attachment once per tenant. Returns False (and changes nothing) when the Step
        already has a job record."""
        ...

    def get_llm_job(self, step_id: str) -> LlmJobRow | None:
        """The job record of a Step, of any tenant (the caller checks it), or None."""
        ...

    def get_attachment(self, tenant: str, sha256: str) -> bytes | None:
        """The tenant's attachment bytes with this hex sha256, or None."""
        ...

    def tenant_job_run(self, tenant: str) -> str | None:
        """The run_id of the Run kept for the tenant's jobs, or None."""
        ...

    def set_tenant_job_run(self, tenant: str, run_id: str) -> None:
        """Name the Run kept for the tenant's jobs (replacing the one named before)."""
        ...

    # -- imported recordings (REC-7011) --------------------------------------------------

    def import_run(self, *, flow: FlowRow | None, run: RunRow, steps: Sequence[StepRow],
                   events: Sequence[EventRow], facts: Sequence[FactRow],
                   checkpoints: Sequence[CheckpointRow],
                   engine_builds: Sequence[tuple[str, str]],
                   prompt_texts: Sequence[tuple[str, str]] = ()) -> None:
        """Store an imported Run with everything it holds in one atomic commit: the Flow
        (when not None), the Run, its finished Steps in submission order (each taking the
        next ordinal; their ``(run_id, client_token)`` keys unique), their frames, Facts
        (with their seq), checkpoints (one whose id exists is skipped), engine build
        settings (first writer wins) and rendered prompt texts ``(hash, text)`` (a hash
        already kept is left as it is; REC-7112). Durable on return.

        Raises:
            the backend's integrity error: a row collides (nothing is written).
        """
        ...

    # -- lifecycle -----------------------------------------------------------------------

    # -- run lifecycle (NERVE-4100, NERVE-4103, NERVE-4104) ------------------------------

    def run_log_page(self, run_id: str, after: int, limit: int) -> list[RunLogEntry]:
        """The run log entries holding run positions above ``after``, in position order,
        from the one holding ``after + 1``; at most ``limit`` (one index range read)."""
        ...

    def run_log_end(self, run_id: str) -> int:
        """One past the Run's last frame position (0 when its log is empty)."""
        ...

    def close_run(self, run_id: str, status: str, closed_at: str) -> bool:
        """Close an ``active`` Run; False (and no change) when it was not active."""
        ...

    def live_steps(self, run_id: str) -> list[str]:
        """The Run's ``queued`` or ``running`` Steps' ids, in submission order."""
        ...

    def set_run_summary(self, run_id: str, summary_json: str) -> None:
        """Keep a closed Run's summary JSON unless it has one."""
        ...

    def summary_rows(self, run_id: str) -> list[SummaryRow]:
        """Every Step of the Run in submission order, as its summary reads them."""
        ...

    def close(self) -> None:
        """Make everything durable and release the backend's resources."""
        ...
