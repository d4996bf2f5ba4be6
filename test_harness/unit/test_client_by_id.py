"""The Python client reads a Checkpoint and a Fact by id (NERVE-4074)."""

from __future__ import annotations

import httpx
import pytest

from contracts.errors import NotFound
from contracts.facts import BUILTIN_FACT_SCHEMA
from orchestrator_core.config import ServerConfig
from orchestratord.client import OrchestratorClient
from test_harness.support import app_client


@pytest.mark.anyio
async def test_the_client_gets_a_checkpoint_and_a_fact_by_id(mock_cfg: ServerConfig) -> None:
    """[NERVE-4074] ``get_checkpoint`` and ``get_fact`` decode the stored objects, and an
    unknown id raises NotFound naming it."""
    with app_client(mock_cfg) as c:
        flow = c.post("/v1/flows", json={"ast_ir": {}}).json()["flow_id"]
        run = c.post(f"/v1/flows/{flow}/runs", json={}).json()["run_id"]
        fact = c.post(f"/v1/runs/{run}/facts", json={
            "type": "seen", "schema_uri": BUILTIN_FACT_SCHEMA, "data": {"n": 2}}).json()
        ckp = c.post(f"/v1/runs/{run}/checkpoint", json={"snapshot": [1, 2]}).json()

        def serve(request: httpx.Request) -> httpx.Response:
            resp = c.request(request.method, request.url.raw_path.decode())
            return httpx.Response(resp.status_code, headers=resp.headers,
                                  content=resp.content)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            got_fact = await oc.get_fact(fact["fact_id"])
            got_ckp = await oc.get_checkpoint(ckp["checkpoint_id"])
            with pytest.raises(NotFound) as missing:
                await oc.get_fact("fct_" + "0" * 24)
    assert (got_fact.fact_id, got_fact.run_id, got_fact.data) == (fact["fact_id"], run, {"n": 2})
    assert (got_ckp.checkpoint_id, got_ckp.run_id, got_ckp.snapshot) == (
        ckp["checkpoint_id"], run, [1, 2])
    assert missing.value.data == {"fact_id": "fct_" + "0" * 24}
