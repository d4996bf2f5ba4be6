"""Fencing: a process declared dead while it still ran writes nothing more for the Steps a
survivor adopted from it (DESIGN.md §7; PG-9108).

The shared store checks, in the transaction of every group commit, that each Step it
writes is still owned by the committing process, and refuses the whole transaction with
:class:`StepFenced` when one is not. The event log then drops that Step's writes, commits
the rest, and hands the Step back: its readers here read the adopter's frames from the
store, and its task is stopped without a terminal frame (the adopter wrote
``INTERRUPTED``). The SQLite store never raises it: one process owns the file.
"""

from __future__ import annotations

__all__ = ["StepFenced"]


class StepFenced(Exception):
    """A commit wrote Steps this process no longer owns; nothing of it was written
    [PG-9108].

    Args:
        step_ids: the Steps another process owns now (adopted from this one).
    """

    def __init__(self, step_ids: frozenset[str]) -> None:
        super().__init__(f"steps owned by another process: {sorted(step_ids)}")
        self.step_ids = step_ids
