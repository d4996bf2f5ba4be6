"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pathlib

import pytest

from orchestrator_core.store import SqliteStore


def seeded(s: SqliteStore) -> SqliteStore:
    """Add flow ``f``, its record run ``r`` and that run's queued step ``s`` to a store."""
    s.insert_flow({"flow_id": "f", "hash": "h", "ast_ir": "{}", "tools": "[]",
                   "config": "{}", "labels": "{}", "created_at": "t"})
    s.insert_run({"run_id": "r", "flow_id": "f", "flow_hash": "h", "mode": "record",
                  "seed": 1, "replay_of": None, "body": "{}", "policy_hash": "p",
                  "status": "active", "created_at": "t"})
    s.insert_step({"step_id": "s", "run_id": "r", "type": "llm_call", "client_token": "c",
                   "input": "{}", "input_hash": "i", "status": "queued", "last_seq": -1})
    return s


@pytest.fixture
def store(tmp_path: pathlib.Path) -> SqliteStore:
    """A fresh store with flow ``f``, its record run ``r`` and that run's queued step ``s``."""
    return seeded(SqliteStore(tmp_path / "o.db"))
