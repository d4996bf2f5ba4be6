"""Which store a server runs on, chosen by its config (PG-9052, PLACE-5008).

Part of the composition root: :meth:`Orchestrator.running` calls :func:`open_store`
when it is given no store. An empty ``store`` opens the embedded SQLite file under
``data_dir``; a ``postgresql://`` DSN opens the PostgreSQL backend, whose module is
imported only then, by its path, so a SQLite-only install never imports psycopg.
"""

from __future__ import annotations

import importlib
import pathlib
from typing import cast

from orchestrator_core.config import ServerConfig
from orchestrator_core.store import SqliteStore
from orchestrator_core.store_base import Store

__all__ = ["PG_STORE_CLASS", "PG_STORE_MODULE", "open_store"]

PG_STORE_MODULE = "orchestrator_core.store_pg"
"""The module of the PostgreSQL backend, imported only when a DSN selects it."""
PG_STORE_CLASS = "PgStore"
"""Its class: ``PgStore(dsn, *, schema=..., migrate_to=None, pool_size=8)``."""


def open_store(config: ServerConfig) -> Store:
    """Open (and migrate) the store ``config`` names (PG-9052).

    Args:
        config: ``config.store`` empty: a :class:`SqliteStore` at
            ``<data_dir>/orchestrator.db`` with ``config.sqlite_synchronous``; a
            ``postgresql://`` DSN: the PostgreSQL store on that database, its tables in
            ``config.store_schema`` (``ServerConfig`` refuses any other value).

    Returns:
        The open store; the caller closes it.

    Raises:
        ModuleNotFoundError: a DSN was given but the PostgreSQL backend (or psycopg) is
            not installed.
        Exception: whatever the backend raises when it cannot connect or migrate
            (``psycopg.OperationalError`` for an unreachable database).
    """
    if not config.store:
        path = pathlib.Path(config.data_dir) / "orchestrator.db"
        return SqliteStore(path, config.sqlite_synchronous)
    backend = getattr(importlib.import_module(PG_STORE_MODULE), PG_STORE_CLASS)
    return cast(Store, backend(config.store, schema=config.store_schema))
