"""The run lifecycle queries of the embedded store: the run log, closing a Run and the
inputs of its summary (NERVE-4100, NERVE-4103, NERVE-4104; schema v13).

The run log is kept by triggers (:func:`orchestrator_core.migrations_late.v13`): every
``events`` row, and every Step stored finished by reference, adds one row numbering its
frames with run positions in commit order. A page of it is one range read of its key
``(run_id, pos)``, whatever the Run holds. :class:`SqliteStore` mixes this class in, on
top of the navigation lists.
"""

from __future__ import annotations

from orchestrator_core.store_jobs import JobQueries

__all__ = ["RunLogEntry", "RunQueries", "SummaryRow"]

RunLogEntry = tuple[int, str, int, int, str]
"""``(pos, step_id, seq, n, step_type)``: the frames ``seq .. seq + n - 1`` of a Step are
at the run positions ``pos .. pos + n - 1``."""

SummaryRow = tuple[str, str, str, str, str | None, str | None, str, int]
"""``(client_token, type, input_hash, status, provenance, model, step_id, last_seq)`` of
one Step, as a Run's summary reads it (``model``: the input's, or None)."""


class RunQueries(JobQueries):
    """The ``Store`` run lifecycle methods over the store's connection."""

    def run_log_page(self, run_id: str, after: int, limit: int) -> list[RunLogEntry]:
        """The run log entries holding positions above ``after``, in position order: from
        the one holding ``after + 1`` (it may also hold positions up to ``after``), at
        most ``limit`` of them (NERVE-4100).

        Args:
            run_id: the Run.
            after: the last position the reader has (-1: none).
            limit: the most entries returned.
        """
        return [(int(p), str(s), int(q), int(n), str(t)) for p, s, q, n, t in self._conn.execute(
            "SELECT r.pos, r.step_id, r.seq, r.n, s.type FROM run_log r"
            " JOIN steps s ON s.step_id = r.step_id WHERE r.run_id = :run AND r.pos >="
            " IFNULL((SELECT MAX(pos) FROM run_log WHERE run_id = :run AND pos <= :after), 0)"
            " ORDER BY r.pos LIMIT :limit", {"run": run_id, "after": after, "limit": limit})]

    def run_log_end(self, run_id: str) -> int:
        """How many frames the Run's log numbers: one past its last position (0 when it
        has none); one step down the key."""
        row = self._conn.execute("SELECT pos + n FROM run_log WHERE run_id = ?"
                                 " ORDER BY pos DESC LIMIT 1", (run_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def close_run(self, run_id: str, status: str, closed_at: str) -> bool:
        """Close an ``active`` Run with ``status`` (NERVE-4103).

        Returns:
            True when the Run was active and is now closed; False when it was not active
            (nothing changed).
        """
        return self._conn.execute(
            "UPDATE runs SET status = ?, closed_at = ? WHERE run_id = ? AND status = 'active'",
            (status, closed_at, run_id)).rowcount == 1

    def live_steps(self, run_id: str) -> list[str]:
        """The step_ids of the Run's ``queued`` or ``running`` Steps in submission order
        (read from the partial index of unfinished Steps, schema v6)."""
        return [str(r[0]) for r in self._conn.execute(
            "SELECT step_id FROM steps WHERE run_id = ? AND status IN ('queued', 'running')"
            " ORDER BY ordinal", (run_id,))]

    def set_run_summary(self, run_id: str, summary_json: str) -> None:
        """Keep a closed Run's summary (first writer wins, NERVE-4104)."""
        self._conn.execute("UPDATE runs SET summary = ? WHERE run_id = ? AND summary IS NULL",
                           (summary_json, run_id))

    def summary_rows(self, run_id: str) -> list[SummaryRow]:
        """Every Step of the Run in submission order, as its summary reads them
        (NERVE-4104; O(the Run's Steps), once per closed Run)."""
        return [(str(c), str(t), str(h), str(st), p, m if isinstance(m, str) else None, str(i),
                 int(q))
                for c, t, h, st, p, m, i, q in self._conn.execute(
                    "SELECT client_token, type, input_hash, status, provenance,"
                    " json_extract(input, '$.model'), step_id, last_seq FROM steps"
                    " WHERE run_id = ? ORDER BY ordinal", (run_id,))]
