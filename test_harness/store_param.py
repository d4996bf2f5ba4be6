"""The suites on either store backend, chosen by one environment variable (PG-9053).

With ``ORCHESTRATORD_TEST_STORE`` unset, every server a test builds keeps its event log
in SQLite under its ``data_dir``, as in production by default. Set to a PostgreSQL DSN
(``tools/test.sh`` does, for its second pass), every server a test builds without a
``store`` of its own runs on that database instead, in a schema named after its
``data_dir``: a test that restarts a server on the same ``data_dir`` finds its data
again, exactly as with the SQLite file, and two tests never share a schema. The schemas a
test made are dropped when it ends.

Tests about SQLite itself (its file, WAL, its migrations, its query plans) carry the
``sqlite_only`` marker (or the ``@sqlite_only`` tag in a feature file) and are skipped on
the PostgreSQL pass.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, ClassVar

import msgspec

from orchestrator_core.config import ServerConfig
from orchestrator_core.store_base import Store

__all__ = [
    "TEST_STORE_ENV",
    "Schemas",
    "count_frames_sql",
    "counts",
    "db_connection",
    "on_postgres",
    "open_test_store",
    "schema_for",
    "test_dsn",
    "with_test_store",
]

TEST_STORE_ENV = "ORCHESTRATORD_TEST_STORE"
"""The environment variable naming the PostgreSQL DSN of the second pass."""

count_frames_sql = ("SELECT COALESCE(SUM(COALESCE(last_seq, seq) - seq + 1), 0) "
                    "FROM events")
"""The frames the event log holds (a packed row holds several, STREAM-2011), in SQL
both backends understand."""


def test_dsn() -> str:
    """The DSN of the PostgreSQL pass, or ``""`` on the SQLite pass."""
    return os.environ.get(TEST_STORE_ENV, "")


def on_postgres() -> bool:
    """True on the PostgreSQL pass."""
    return bool(test_dsn())


def schema_for(data_dir: str | pathlib.Path) -> str:
    """The schema of the server whose ``data_dir`` this is: ``t_`` and 24 hex digits of
    the sha256 of its absolute path (a valid identifier, never quoted)."""
    path = str(pathlib.Path(data_dir).resolve())
    return "t_" + hashlib.sha256(path.encode()).hexdigest()[:24]


class Schemas:
    """The schemas this process made on the PostgreSQL pass, to drop after each test."""

    made: ClassVar[set[str]] = set()

    @classmethod
    def ensure(cls, schema: str) -> None:
        """Create ``schema`` if it is missing, and remember it."""
        import psycopg

        with psycopg.connect(test_dsn(), autocommit=True) as con:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        cls.made.add(schema)

    @classmethod
    def drop(cls, schemas: set[str]) -> None:
        """Drop these schemas with what they hold, and forget them."""
        if not schemas:
            return
        import psycopg

        with psycopg.connect(test_dsn(), autocommit=True) as con:
            con.execute("SET lock_timeout = '10s'")  # a store left open fails, not stalls
            for schema in sorted(schemas):
                con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        cls.made -= schemas

    @classmethod
    def drop_all(cls) -> None:
        """Drop every remembered schema with what it holds."""
        cls.drop(set(cls.made))


def with_test_store(config: ServerConfig) -> ServerConfig:
    """``config`` on this pass's store: unchanged on the SQLite pass or when it names a
    store of its own; otherwise on PostgreSQL in the schema of its ``data_dir``."""
    if not on_postgres() or config.store:
        return config
    schema = schema_for(config.data_dir)
    Schemas.ensure(schema)
    return msgspec.structs.replace(config, store=test_dsn(), store_schema=schema)


def db_connection(data_dir: str | pathlib.Path) -> Any:
    """A DB-API connection to the store of the server whose data dir this is: its SQLite
    file, or on the PostgreSQL pass its schema (for SQL with no parameters, which both
    backends read alike); the caller closes it."""
    if not on_postgres():
        import sqlite3

        return sqlite3.connect(pathlib.Path(data_dir) / "orchestrator.db")
    import psycopg

    con = psycopg.connect(test_dsn(), autocommit=True)
    con.execute(f"SET search_path TO {schema_for(data_dir)}")
    return con


def open_test_store(data_dir: str | pathlib.Path) -> Store:
    """The store of the (stopped) server whose data dir this is, as that server opens
    it on this pass; the caller closes it."""
    from orchestrator_core.config import mock_config
    from orchestrator_core.store_open import open_store

    return open_store(with_test_store(mock_config(data_dir=str(data_dir))))


def counts(con: Any, tables: tuple[str, ...]) -> dict[str, int]:
    """Row counts of ``tables`` and, under ``events``, the frames the log holds, through
    a DB-API connection of either backend."""
    out = {t: int(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])  # noqa: S608
           for t in tables}
    out["events"] = int(con.execute(count_frames_sql).fetchone()[0])
    return out
