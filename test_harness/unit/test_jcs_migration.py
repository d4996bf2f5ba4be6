"""A store written before RFC 8785 canonical JSON keeps its identities (NERVE-4048)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from orchestrator_core import canonical, service, store
from orchestrator_core.config import ServerConfig
from orchestrator_core.steps import admission
from orchestrator_core.store import SqliteStore
from test_harness.bdd.conftest import run_to_end
from test_harness.support import app_client, llm_step, parse_sse

FLOW = {"ast_ir": {"weights": [1.0, 1e21, 1e-7, -0.0, 0.5]}, "config": {"temperature": 1.0}}
BODIES = [llm_step("c-0", "first prompt", temperature=0.0),
          llm_step("c-1", "second prompt", temperature=0.8, top_p=0.9)]
_NO_ALIAS = "SELECT * FROM flows WHERE 0"
pytestmark = pytest.mark.sqlite_only  # an old SQLite file migrating (PG-9053)


def _legacy_canonical_json(value: Any) -> bytes:
    return msgspec.json.Encoder(order="sorted").encode(msgspec.to_builtins(value))


def _frames(raw: bytes) -> list[tuple[str, str]]:
    return [(f["event"], f["data"]) for f in parse_sse(raw)
            if f["id"] is not None and f["event"] == "token"]


@pytest.fixture
def old_store(mock_cfg: ServerConfig,
              monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A data directory written by the code before schema v8: a Flow with floats, a
    record Run of two LLM steps at float temperatures, and what the old server answered."""
    monkeypatch.setattr(canonical, "canonical_json", _legacy_canonical_json)
    monkeypatch.setattr(service, "canonical_json", _legacy_canonical_json)
    monkeypatch.setattr(admission, "canonical_json", _legacy_canonical_json)
    monkeypatch.setattr(SqliteStore, "migrate_to", 7)
    monkeypatch.setattr(store, "FLOW_BY_ID", _NO_ALIAS)
    monkeypatch.setattr(store, "FLOW_BY_HASH", _NO_ALIAS)
    with app_client(mock_cfg) as client:
        flow = client.post("/v1/flows", json=FLOW).json()
        run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 7}).json()
        recorded = [_frames(run_to_end(client, run["run_id"], b)[1]) for b in BODIES]
    monkeypatch.undo()
    return {"flow": flow, "run_id": run["run_id"], "recorded": recorded}


@pytest.fixture
def upgraded(mock_cfg: ServerConfig, old_store: dict[str, Any]) -> Iterator[TestClient[Any]]:
    """The same data directory opened by today's server (migrating it to v8)."""
    with app_client(mock_cfg) as client:
        yield client


def test_the_old_hash_differs_from_the_rfc_8785_hash(old_store: dict[str, Any]) -> None:
    """[NERVE-4048] The fixture's Flow is one whose address changes under RFC 8785."""
    content = {"ast_ir": FLOW["ast_ir"], "tools": [], "config": FLOW["config"]}
    assert old_store["flow"]["hash"] == canonical.b3_legacy(content)
    assert old_store["flow"]["hash"] != canonical.b3(content)


def test_an_old_flow_resolves_by_its_old_id_and_old_hash(upgraded: TestClient[Any],
                                                           old_store: dict[str, Any]) -> None:
    """[NERVE-4048] After the migration the old flow_id and the old hash find the Flow,
    which now reports its RFC 8785 hash; the id that hash derives also finds it."""
    old = old_store["flow"]
    new_hash, new_id = canonical.flow_address(
        {"ast_ir": FLOW["ast_ir"], "tools": [], "config": FLOW["config"]}, "default")
    by_id = upgraded.get(f"/v1/flows/{old['flow_id']}")
    by_hash = upgraded.get(f"/v1/flows:by-hash/{old['hash']}")
    by_new_hash = upgraded.get(f"/v1/flows:by-hash/{new_hash}")
    by_new_id = upgraded.get(f"/v1/flows/{new_id}")
    assert [r.status_code for r in (by_id, by_hash, by_new_hash, by_new_id)] == [200] * 4
    assert {(r.json()["flow_id"], r.json()["hash"])
            for r in (by_id, by_hash, by_new_hash, by_new_id)} == {(old["flow_id"], new_hash)}


def test_reposting_an_old_flow_returns_it(upgraded: TestClient[Any],
                                          old_store: dict[str, Any]) -> None:
    """[NERVE-4048] The same content posted again is the existing Flow: 200, its old id."""
    resp = upgraded.post("/v1/flows", json=FLOW)
    assert resp.status_code == 200
    assert (resp.json()["flow_id"], resp.json()["created"]) == \
        (old_store["flow"]["flow_id"], False)


def test_an_old_step_token_is_still_idempotent(upgraded: TestClient[Any],
                                               old_store: dict[str, Any]) -> None:
    """[NERVE-4048] Resubmitting a step recorded under the old hash returns that step."""
    resp = upgraded.post(f"/v1/runs/{old_store['run_id']}/steps", json=BODIES[1])
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("mode", ["replay", "strict_replay"])
def test_an_old_recording_replays_byte_for_byte(upgraded: TestClient[Any],
                                                old_store: dict[str, Any], mode: str) -> None:
    """[NERVE-4048] replay and strict_replay of a recording made before the change are
    admitted and give its token frames byte for byte."""
    run = upgraded.post(f"/v1/flows/{old_store['flow']['flow_id']}/runs",
                        json={"mode": mode, "replay_of": old_store["run_id"]})
    assert run.status_code == 201, run.text
    replayed = []
    for body in BODIES:
        _step, raw = run_to_end(upgraded, run.json()["run_id"], body)
        assert parse_sse(raw)[-1]["event"] == "end", raw
        replayed.append(_frames(raw))
    assert replayed == old_store["recorded"]
    assert all(replayed)
