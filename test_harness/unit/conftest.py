"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator_core.rows import FlowRow, RunRow, StepRow
from orchestrator_core.store import SqliteStore

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
