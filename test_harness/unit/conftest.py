"""Fixtures shared by the unit tests."""

from __future__ import annotations

import itertools
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore
from test_harness import pg_support

if TYPE_CHECKING:
    from orchestrator_core.store_pg import PgStore

RUN = RunRow(run_id="r", flow_id="f", flow_hash="h", mode="record", seed=1, replay_of=None,
             body="{}", policy_hash="p", status="active", created_at="t")
"""The record run ``r`` of :func:`seeded`."""


def seeded(s: SqliteStore) -> SqliteStore:
    """Add flow ``f``, its record run ``r`` and that run's queued step ``s`` to a store."""
    s.insert_flow(FlowRow(flow_id="f", hash="h", ast_ir="{}", tools="[]", config="{}",
                          labels="{}", created_at="t"))
    s.insert_run(RUN)
    s.insert_step(StepRow(step_id="s", run_id="r", type="llm_call", client_token="c",
                          input="{}", input_hash="i", placement=None, status="queued",
                          seed=None, created_at="t"))
    return s


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    """A fresh store with flow ``f``, its record run ``r`` and that run's queued step ``s``."""
    return seeded(SqliteStore(tmp_path / "o.db"))


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """[PG-9040] The shared throwaway cluster's DSN, stopped at the end of the session;
    a test that asks for it skips without the server binaries (fails under ``.ci/run``)."""
    pg_support.require_binaries()
    yield pg_support.session_dsn()
    pg_support.stop_shared()


_schemas = itertools.count()


@pytest.fixture
def procs(pg_dsn: str, request: pytest.FixtureRequest) -> \
        Iterator[Callable[[int], list[PgStore]]]:
    """Opens ``n`` stores ("processes") on one fresh schema, the first one seeded with
    flow ``f``, run ``r`` and queued step ``s``; closes them after."""
    from orchestrator_core.store_pg import PgStore

    opened: list[PgStore] = []
    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    prefix = prefix.removeprefix("pg_")[:12]  # "pg_" opens a reserved schema name

    def open_procs(n: int) -> list[PgStore]:
        schema = f"{prefix}{next(_schemas)}_{int(time.time() * 1000) % 100000}"
        opened.extend(PgStore(pg_dsn, schema=schema) for _ in range(n))
        seeded(opened[-n])  # type: ignore[arg-type]
        return opened[-n:]

    yield open_procs
    for s in opened:
        s.close()
