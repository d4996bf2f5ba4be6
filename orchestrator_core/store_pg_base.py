"""The PostgreSQL store's connections, statements and shared write paths (PG-9000).

:class:`PgBase` owns the psycopg connection pool of :class:`~orchestrator_core.store_pg.
PgStore` and the helpers its mixins use. Every connection is in autocommit mode with its
``search_path`` set to the store's schema at connect time, so a one-statement method is
one round trip and one transaction, and a method of several statements runs them in one
explicit transaction (:meth:`PgBase._tx`). Rows are read as tuples from the column lists
of :mod:`orchestrator_core.rows`, whose field names are the tables' column names.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import msgspec
import psycopg
import psycopg_pool

from orchestrator_core.rows import CheckpointRow, FactRow, FlowRow, RunRow, StepRow

__all__ = ["Conn", "PgBase", "label_rows", "unstorable"]

Conn = psycopg.Connection[tuple[Any, ...]]
"""A pooled connection (tuple rows)."""

_R = TypeVar("_R", bound=msgspec.Struct)

_IDENT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def _cols(row: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(row.__struct_fields__)


def _select(table: str, row: type[msgspec.Struct]) -> str:
    return f"SELECT {', '.join(_cols(row))} FROM {table}"  # noqa: S608 - names from rows.py


def _insert(table: str, row: type[msgspec.Struct], *, ignore: bool,
            ordinal: str | None = None) -> str:
    """``INSERT INTO table (columns) VALUES (%s, ...)``, ``ON CONFLICT DO NOTHING`` when
    ``ignore``; with ``ordinal``, the column ``ordinal`` takes that expression."""
    cols = _cols(row)
    marks = ["%s"] * len(cols)
    if ordinal is not None:
        marks[cols.index("ordinal")] = ordinal
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(marks)})"  # noqa: S608
            + (" ON CONFLICT DO NOTHING" if ignore else ""))


FLOWS, RUNS, STEPS, FACTS, CHECKPOINTS = (
    _select(t, r) for t, r in (("flows", FlowRow), ("runs", RunRow), ("steps", StepRow),
                               ("facts", FactRow), ("checkpoints", CheckpointRow)))
"""``SELECT <row's columns> FROM <table>`` of each row type."""

RUN_COLS_R = ", ".join("r." + c for c in _cols(RunRow))
"""The runs column list, each prefixed ``r.``."""

INSERT_FLOW = _insert("flows", FlowRow, ignore=True)
INSERT_RUN = _insert("runs", RunRow, ignore=False)
INSERT_FACT = _insert("facts", FactRow, ignore=False)
INSERT_CHECKPOINT = _insert("checkpoints", CheckpointRow, ignore=True)
INSERT_STEP = _insert("steps", StepRow, ignore=True, ordinal=(
    "(SELECT COALESCE(MAX(ordinal), -1) + 1 FROM steps WHERE run_id = %s)"))
"""A Step with the next ordinal of its Run (the parameter in place of ``ordinal`` is its
run_id); any unique conflict (step_id, the idempotency key) inserts nothing."""

_ORDINAL_AT = _cols(StepRow).index("ordinal")

LOCK_RUN = "SELECT 1 FROM runs WHERE run_id = %s FOR NO KEY UPDATE"
"""Serialises the writers that number a Run's Steps or Facts until COMMIT (the reads of
the foreign keys, ``FOR KEY SHARE``, do not wait on it)."""

INSERT_EVENT = ("INSERT INTO events (step_id, seq, run_id, type, data, last_seq)"
                " VALUES (%s, %s, %s, %s, %s, %s)")


def unstorable(args: Sequence[Any] | dict[str, Any]) -> bool:
    """Whether a parameter is text holding U+0000, which PostgreSQL text cannot hold: a
    key with one names no stored row, so a lookup by it answers as for an unknown key
    (PG-9008) instead of failing."""
    values = args.values() if isinstance(args, dict) else args
    return any(isinstance(v, str) and "\x00" in v for v in values)


def label_rows(row: RunRow) -> list[tuple[str, str, bytes, bytes, str]]:
    """``(flow_id, tenant, key, value, run_id)`` for each text label in the Run's body,
    UTF-8 encoded (as SQLite's ``json_each(body, '$.labels')`` rows of type text).

    Raises:
        msgspec.DecodeError: the body is not JSON.
    """
    body = msgspec.json.decode(row.body)
    labels = body.get("labels") if isinstance(body, dict) else None
    if not isinstance(labels, dict):
        return []
    return [(row.flow_id, row.tenant, k.encode(), v.encode(), row.run_id)
            for k, v in labels.items() if isinstance(v, str)]


class PgBase:
    """The pool and the helpers of the PostgreSQL store.

    Args:
        dsn: a libpq connection string or URI.
        schema: the schema holding the store's tables (lowercase letters, digits, ``_``).
        pool_size: the most connections the pool opens.

    Raises:
        ValueError: ``schema`` is not such a name.
        psycopg_pool.PoolTimeout: no connection could be made within 30 s.
    """

    def __init__(self, dsn: str, *, schema: str, pool_size: int) -> None:
        if not schema or not set(schema) <= _IDENT or schema[0].isdigit() or len(schema) > 63:
            raise ValueError(f"schema name {schema!r} is not a lowercase identifier")
        self.schema = schema
        self.process_id = uuid.uuid4().hex
        """This store's process in the shared schema: the owner of the Steps it inserts
        (each connection sets ``orchestratord.process`` to it, PG-9100)."""
        self._pool: psycopg_pool.ConnectionPool[Conn] = psycopg_pool.ConnectionPool(
            dsn, min_size=1, max_size=max(1, pool_size), open=False,
            kwargs={"autocommit": True, "options": f"-c search_path={schema} -c"
                                                   f" orchestratord.process={self.process_id}"})
        self._pool.open(wait=True, timeout=30.0)

    @property
    def channel(self) -> str:
        """The ``LISTEN`` channel of this schema's commits (at most 63 bytes, PG-9103)."""
        return ("orchestratord_" + self.schema)[:63]

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Conn]:
        """One transaction on a pooled connection: COMMIT on exit, ROLLBACK on error."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def _exec(self, query: str, args: Sequence[Any] | dict[str, Any] = ()) -> int:
        """Run one statement as its own transaction; its row count."""
        with self._conn() as conn:
            return conn.execute(query, args).rowcount

    def _rows(self, query: str, args: Sequence[Any] | dict[str, Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one read; none when a text key holds U+0000 (:func:`unstorable`)."""
        if unstorable(args):
            return []
        with self._conn() as conn:
            return conn.execute(query, args).fetchall()

    def _first(self, query: str,
               args: Sequence[Any] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        """The first row of one read, or None (also when a text key holds U+0000)."""
        if unstorable(args):
            return None
        with self._conn() as conn:
            return conn.execute(query, args).fetchone()

    def _one(self, row: type[_R], query: str,
             args: Sequence[Any] | dict[str, Any] = ()) -> _R | None:
        values = self._first(query, args)
        return None if values is None else row(*values)

    def _all(self, row: type[_R], query: str,
             args: Sequence[Any] | dict[str, Any] = ()) -> list[_R]:
        return [row(*values) for values in self._rows(query, args)]

    @staticmethod
    def _insert_step(conn: Conn, row: StepRow) -> bool:
        """Insert a Step with the next ordinal of its Run, inside the caller's transaction:
        the Run's row lock first, so the ordinal read after it is the latest; a taken
        key inserts nothing (the unique constraint decides, NERVE-4105)."""
        conn.execute(LOCK_RUN, (row.run_id,))
        values = msgspec.structs.astuple(row)
        values = (*values[:_ORDINAL_AT], row.run_id, *values[_ORDINAL_AT + 1:])
        return conn.execute(INSERT_STEP, values).rowcount == 1

    @staticmethod
    def _insert_run(conn: Conn, row: RunRow) -> None:
        """Insert a Run and its label rows inside the caller's transaction."""
        rid = conn.execute(INSERT_RUN + " RETURNING rid",
                           msgspec.structs.astuple(row)).fetchone()
        labels = label_rows(row)
        if labels and rid is not None:
            conn.cursor().executemany(
                "INSERT INTO run_labels (flow_id, key, value, run_rowid) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING", [(f, k, v, rid[0]) for f, _, k, v, _ in labels])
            conn.cursor().executemany(
                "INSERT INTO run_tenant_labels (tenant, key, value, run_rowid)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(t, k, v, rid[0]) for _, t, k, v, _ in labels])

    def close(self) -> None:
        """Close every connection of the pool (each write was committed on return)."""
        self._pool.close()
