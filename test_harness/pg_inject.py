"""A pytest plugin that runs every in-process orchestrator on a PgStore (PG-9043).

``python -m pytest -p test_harness.pg_inject test_harness/bdd`` starts a throwaway cluster
(:mod:`test_harness.pg_support`; or uses ``$ORCHESTRATORD_TEST_PG_DSN``) and replaces the
SQLite store that ``Orchestrator.running`` opens by default (through
:func:`orchestrator_core.store_open.open_store`) with a
:class:`~orchestrator_core.store_pg.PgStore` whose schema is named after the data
directory, so a restart over the same data directory (the crash tests) reopens the same
schema. It is a cheap way to try a whole suite on PostgreSQL; tests that open the SQLite
file themselves still look for it, and fail.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

import pytest

from orchestrator_core import store_open
from orchestrator_core.store_pg import PgStore
from test_harness import pg_support

_state: dict[str, str] = {}


def _pg_store(path: str | pathlib.Path, synchronous: str = "NORMAL") -> PgStore:
    """The PgStore standing in for ``SqliteStore(path, synchronous)``: one schema per
    data directory."""
    del synchronous  # PostgreSQL commits are durable (synchronous_commit)
    digest = hashlib.sha256(str(pathlib.Path(path).resolve().parent).encode()).hexdigest()
    return PgStore(_state["dsn"], schema="d_" + digest[:24], pool_size=4)


def pytest_configure(config: pytest.Config) -> None:
    """Start the cluster (unless a DSN is given) and swap the default store."""
    dsn = os.environ.get("ORCHESTRATORD_TEST_PG_DSN")
    if dsn is None:
        _state["dir"] = tempfile.mkdtemp(prefix="pgi-")
        dsn = pg_support.start_cluster(_state["dir"])
    _state["dsn"] = dsn
    # the default store is built by store_open (PG-9052); not exported, replaced on purpose
    setattr(store_open, "SqliteStore", _pg_store)  # noqa: B010


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the cluster this plugin started."""
    if "dir" in _state:
        pg_support.stop_cluster(_state.pop("dir"))
