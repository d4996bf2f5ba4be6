"""Packed event rows: one ``events`` row per Step per group commit (STREAM-2011).

From schema v11 a group commit stores the consecutive non-terminal frames it holds for a
Step as ONE row: its key ``seq`` is the first frame's seq, its ``last_seq`` the last
one's, its ``type`` is :data:`PACKED` and its ``data`` the frames' ``(type, data)`` pairs
in seq order, as a MessagePack array. A lone frame, and every terminal frame, stays a
row of its own (``last_seq`` NULL), as every row written before v11 is. Readers expand
the rows back into the ``(seq, type, data)`` frames that were appended, so the packing is
invisible above the store: one row costs one B-tree insert and one cell instead of one
per frame (the per-token INSERT was about a third of the server's CPU per token).

A row is one SQLite write, so a packed row is committed whole or not at all: crash
recovery keeps every frame of every commit that returned, as it did with one row each.

The store runs the statements :func:`event_sql` builds for the schema it opened (this
module touches no database itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import msgspec

from contracts.events import TERMINAL_FRAMES
from orchestrator_core.rows import EventRead, EventRow

__all__ = [
    "MISCOUNT_ROWS",
    "PACKED",
    "EventSql",
    "PackedRow",
    "event_sql",
    "expand",
    "miscounted",
    "pack",
]

PACKED = "packed"
"""The ``type`` of a row that holds several frames (no frame type has this name)."""

PackedRow = tuple[str, int, str, str, bytes, int | None]
"""``(step_id, seq, run_id, type, data, last_seq)``: an ``events`` row as written from
schema v11; ``last_seq`` is None for a row of one frame."""

_TERMINAL = frozenset(t.value for t in TERMINAL_FRAMES)
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(list[tuple[str, bytes]])


def _close(group: list[EventRow], out: list[PackedRow]) -> None:
    """Append a Step's run of consecutive frames to ``out`` as one row."""
    first = group[0]
    if len(group) == 1:
        out.append((*first, None))
        return
    out.append((first[0], first[1], first[2], PACKED,
                _enc.encode([(r[3], r[4]) for r in group]), group[-1][1]))


def pack(rows: Sequence[EventRow]) -> list[PackedRow]:
    """The rows one group commit writes for its frames [STREAM-2011].

    Args:
        rows: the commit's frames ``(step_id, seq, run_id, type, data)``, each Step's in
            seq order (Steps may interleave).

    Returns:
        One row per run of consecutive seqs of a Step, each Step's rows in seq order
        (the order the run log numbers them in, NERVE-4100); each terminal frame
        (``end``, ``error``) is a row of its own and so is a run of one frame; the others
        are :data:`PACKED` rows.
    """
    out: list[PackedRow] = []
    groups: dict[str, list[EventRow]] = {}
    for row in rows:
        if row[3] in _TERMINAL:  # after the Step's frames before it (run order, NERVE-4100)
            before = groups.pop(row[0], None)
            if before is not None:
                _close(before, out)
            out.append((*row, None))
            continue
        group = groups.get(row[0])
        if group is None:
            groups[row[0]] = [row]
        elif group[-1][1] + 1 == row[1]:
            group.append(row)
        else:  # not consecutive (never from the event log): start another row
            _close(group, out)
            groups[row[0]] = [row]
    for group in groups.values():
        _close(group, out)
    return out


def expand(rows: Iterable[tuple[int, str, bytes, int | None]], after_seq: int,
           limit: int) -> list[EventRead]:
    """The frames of stored rows with ``seq > after_seq``, at most ``limit`` of them.

    Args:
        rows: ``(seq, type, data, last_seq)`` rows of one Step in seq order; the first
            may start at or before ``after_seq`` (a resume in the middle of a packed row).
        after_seq: frames up to this seq are skipped.
        limit: the most frames returned.

    Returns:
        ``(seq, type, data)`` frames in seq order, as they were appended.
    """
    out: list[EventRead] = []
    for seq, ftype, data, last in rows:
        if last is None:
            if seq > after_seq:
                out.append((seq, ftype, data))
            continue
        skip = after_seq - seq + 1
        frames = _dec.decode(data)
        if skip > 0:
            seq, frames = seq + skip, frames[skip:]
        out.extend((seq + i, t, d) for i, (t, d) in enumerate(frames))
    return out if len(out) <= limit else out[:limit]


class EventSql(NamedTuple):
    """The event log's statements for the schema a store opened (see :func:`event_sql`)."""

    packed: bool
    """True from schema v11: commits write :func:`pack`'s rows."""
    last: str
    """SQL for the seq of a row's last frame (``IFNULL(last_seq, seq)``)."""
    insert: str
    """INSERT of one row, ``(step_id, seq, run_id, type, data[, last_seq])``."""
    read: str
    """Rows of a Step (``:id``) from the one holding frame ``:after + 1``, at most
    ``:limit + 1``, as ``(seq, type, data, last_seq)`` for :func:`expand`."""
    max_seq: str
    """The seq of a Step's (``:id``) last frame; no row when it has none."""


def event_sql(packed: bool, frames_of: str) -> EventSql:
    """The statements of the event log.

    Args:
        packed: the ``events`` table has ``last_seq`` (schema v11).
        frames_of: SQL naming the Step whose rows hold ``:id``'s frames (NERVE-4025).
    """
    last = "IFNULL(last_seq, seq)" if packed else "seq"
    columns = "step_id, seq, run_id, type, data" + (", last_seq" if packed else "")
    marks = ", ".join("?" * (6 if packed else 5))
    held = "last_seq" if packed else "NULL"
    return EventSql(
        packed=packed, last=last,
        insert=f"INSERT INTO events ({columns}) VALUES ({marks})",  # noqa: S608
        # from the row holding the frame after the cursor: the last one starting at or
        # before the cursor (at most one row more than needed)
        read=(f"SELECT seq, type, data, {held} FROM events"  # noqa: S608
              f" WHERE step_id = {frames_of} AND seq >= IFNULL((SELECT MAX(seq)"
              f" FROM events WHERE step_id = {frames_of} AND seq <= :after), -1)"
              " ORDER BY seq LIMIT :limit + 1"),
        max_seq=(f"SELECT {last} FROM events WHERE step_id = {frames_of}"  # noqa: S608
                 " ORDER BY seq DESC LIMIT 1"))


MISCOUNT_ROWS = "SELECT last_seq - seq + 1, data FROM events WHERE last_seq IS NOT NULL"
"""The ``(frames it should hold, data)`` of every packed row, for :func:`miscounted`."""


def miscounted(rows: Iterable[tuple[int, bytes]]) -> int:
    """How many packed rows ``(frames they should hold, data)`` hold another count."""
    return sum(len(_dec.decode(d)) != n for n, d in rows)
