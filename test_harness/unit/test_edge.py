"""Hostile input and requests from web pages, at the HTTP edge (NERVE-4032, NERVE-4052,
NERVE-4051)."""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from contracts.facts import BUILTIN_FACT_SCHEMA
from orchestrator_core.config import ServerConfig
from orchestratord.cli import _config
from orchestratord.edge import check_json_value, host_is_allowed
from test_harness.support import MOCK_MODEL, app_client, llm_step, table_counts

JSON = {"Content-Type": "application/json"}


def _nested(depth: int) -> bytes:
    return b'{"ast_ir":' + b"[" * depth + b"]" * depth + b"}"


@pytest.fixture
def ids(client: TestClient[Any]) -> dict[str, str]:
    """A Flow, a record Run and a finished Step of the default tenant."""
    flow = client.post("/v1/flows", json={"ast_ir": {"edge": 1}}).json()["flow_id"]
    run = client.post(f"/v1/flows/{flow}/runs", json={"mode": "record", "seed": 1}).json()
    step = client.post(f"/v1/runs/{run['run_id']}/steps", json=llm_step("s1")).json()
    client.get(f"/v1/steps/{step['step_id']}/stream")
    return {"flow": flow, "run": run["run_id"], "step": step["step_id"]}


class TestJsonBodies:
    """Every malformed body is a typed 4xx naming the problem; nothing is stored
    [NERVE-4032]."""

    @pytest.mark.parametrize("depth", [1_000, 10_000])
    def test_deep_nesting_is_too_deep(self, client: TestClient[Any], mock_cfg: ServerConfig,
                                      depth: int) -> None:
        """Arrays nested 1,000 or 10,000 levels are 400 ``too_deep``, not a 500."""
        resp = client.post("/v1/flows", content=_nested(depth), headers=JSON)
        body = resp.json()
        assert (resp.status_code, body["code"], body["data"]["field"],
                body["data"]["reason"]) == (400, "INVALID_PARAMS", "body", "too_deep")
        assert table_counts(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db")["flows"] == 0

    def test_a_key_holding_u0000_is_refused_naming_its_field(
            self, client: TestClient[Any], ids: dict[str, str]) -> None:
        """[PG-9044] A ``client_token``, a model id or a label holding U+0000 is a 400
        naming the field on every store (PostgreSQL text cannot hold it); nothing is
        stored."""
        step = llm_step("a\u0000b")
        labelled = {"mode": "record", "seed": 1, "labels": {"k": "v\u0000"}}
        answers = [client.post(f"/v1/runs/{ids['run']}/steps", json=step),
                   client.post(f"/v1/flows/{ids['flow']}/runs", json=labelled)]
        assert [(r.status_code, r.json()["code"], r.json()["data"]["field"])
                for r in answers] == [(400, "INVALID_PARAMS", "client_token"),
                                      (400, "INVALID_PARAMS", "labels[...]")]
        steps = client.get(f"/v1/runs/{ids['run']}/steps").json()
        assert [s["client_token"] for s in steps] == ["s1"]

    def test_a_correlation_id_is_echoed_only_when_valid(self, client: TestClient[Any]) -> None:
        """[NERVE-4032] A caller's ``X-Correlation-Id`` of 1..128 allowed characters is
        echoed; a longer one or one with other characters is replaced by a UUID."""
        ok, long_id, odd = ("a.b:c-1_2", "x" * 129, "a b/c")
        seen = [client.get("/health", headers={"X-Correlation-Id": cid}).headers[
            "x-correlation-id"] for cid in (ok, long_id, odd)]
        assert (seen[0], len(seen[1]), len(seen[2])) == (ok, 36, 36)

    def test_nesting_at_the_limit_is_accepted_and_one_more_is_not(
            self, client: TestClient[Any]) -> None:
        """63 levels inside the body's own object fit the default 64; 64 do not."""
        ok = client.post("/v1/flows", content=_nested(63), headers=JSON)
        deep = client.post("/v1/flows", content=_nested(64), headers=JSON)
        assert (ok.status_code, deep.status_code, deep.json()["data"]["path"]) == (
            201, 400, "$['ast_ir']" + "[0]" * 63)

    @pytest.mark.parametrize("route", ["/v1/flows", "/v1/flows/{flow}/runs",
                                       "/v1/runs/{run}/steps", "/v1/runs/{run}/facts",
                                       "/v1/runs/{run}/checkpoint"])
    def test_invalid_utf8_is_refused_on_every_body_route(
            self, client: TestClient[Any], ids: dict[str, str], route: str) -> None:
        """A 0xFF byte inside a JSON string is 400 ``not_utf8``."""
        resp = client.post(route.format(**ids), content=b'{"x": "ab\xff\xfe"}', headers=JSON)
        assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
            400, "INVALID_PARAMS", {"field": "body", "reason": "not_utf8"})

    def test_malformed_json_is_refused(self, client: TestClient[Any]) -> None:
        """A truncated document is 400 ``malformed``."""
        resp = client.post("/v1/flows", content=b'{"ast_ir": [1, 2', headers=JSON)
        assert (resp.status_code, resp.json()["data"]["reason"]) == (400, "malformed")

    @pytest.mark.parametrize(("literal", "reason"), [
        (b"123456789012345678901234567890", "integer_range"),
        (b"-9223372036854775809", "integer_range"),
        (b"1e999", "number_range"),
    ])
    def test_numbers_out_of_range_anywhere_are_refused(self, client: TestClient[Any],
                                                       literal: bytes, reason: str) -> None:
        """A huge number in free JSON (``ast_ir``) is refused, not stored."""
        resp = client.post("/v1/flows", content=b'{"ast_ir": {"n": [' + literal + b"]}}",
                           headers=JSON)
        assert (resp.status_code, resp.json()["data"]["reason"]) == (400, reason)

    def test_int64_bounds_themselves_are_accepted(self, client: TestClient[Any]) -> None:
        """The extremes of the signed 64-bit range pass the check."""
        resp = client.post("/v1/flows", headers=JSON, content=(
            b'{"ast_ir": [9223372036854775807, -9223372036854775808]}'))
        assert resp.status_code == 201

    @pytest.mark.parametrize("seed", [2**63, 2**64, -1])
    def test_step_seed_outside_zero_to_int64_max_is_refused(
            self, client: TestClient[Any], ids: dict[str, str], seed: int) -> None:
        """``params.seed`` of 2**63 or more, or -1 (llama.cpp's "random"), is a typed 400."""
        resp = client.post(f"/v1/runs/{ids['run']}/steps",
                           json=llm_step("seeded", seed=seed))
        assert (resp.status_code, resp.json()["code"]) == (400, "INVALID_PARAMS")
        assert "seed" in json.dumps(resp.json())

    def test_text_plain_post_is_415_and_creates_nothing(
            self, client: TestClient[Any], mock_cfg: ServerConfig) -> None:
        """What a browser sends cross-site without a preflight is refused."""
        resp = client.post("/v1/flows", content=b'{"ast_ir": {"x": 1}}',
                           headers={"Content-Type": "text/plain"})
        assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
            415, "UNSUPPORTED_MEDIA_TYPE", {"content_type": "text/plain"})
        assert table_counts(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db")["flows"] == 0

    def test_json_with_a_charset_parameter_is_accepted(self, client: TestClient[Any]) -> None:
        """``application/json; charset=utf-8`` is JSON."""
        resp = client.post("/v1/flows", content=b'{"ast_ir": {"x": 2}}',
                           headers={"Content-Type": "application/json; charset=utf-8"})
        assert resp.status_code == 201


class TestLastEventId:
    """Both streams answer an out-of-range Last-Event-ID the same way [NERVE-4032]."""

    @pytest.mark.parametrize("route", ["/v1/steps/{step}/stream",
                                       "/v1/runs/{run}/facts/stream"])
    @pytest.mark.parametrize("value", [str(2**63), str(2**64), "-1", "9" * 400, "x", "+1",
                                       "1_0", "1 "])
    def test_out_of_range_is_400_before_the_stream(
            self, client: TestClient[Any], ids: dict[str, str], route: str, value: str) -> None:
        """Values outside [0, 2**63) are refused with the value echoed (cut to 64 chars)."""
        resp = client.get(route.format(**ids), headers={"Last-Event-ID": value})
        assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
            400, "INVALID_PARAMS", {"last_event_id": value[:64]})


class TestNoAuthGuards:
    """A server without tokens answers loopback hosts only and refuses cross-origin state
    changes [NERVE-4052]."""

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8787", "localhost:8787",
                                      "[::1]:8787", "api.localhost", "127.9.9.9"])
    def test_loopback_hosts_are_allowed(self, host: str) -> None:
        """Loopback names and literals, with or without a port."""
        assert host_is_allowed(host)

    @pytest.mark.parametrize("host", ["evil.example", "evil.example:8787", "10.0.0.1",
                                      "localhost.evil.example", "[::2]:80", ""])
    def test_other_hosts_are_not(self, host: str) -> None:
        """Anything a rebinding attacker's page would send."""
        assert not host_is_allowed(host)

    def test_a_rebinding_host_gets_403_on_reads_and_writes(
            self, client: TestClient[Any], ids: dict[str, str]) -> None:
        """A request whose Host names another site reads and changes nothing."""
        read = client.get(f"/v1/runs/{ids['run']}", headers={"Host": "evil.example:8787"})
        write = client.post("/v1/flows", json={"ast_ir": {}},
                            headers={"Host": "evil.example:8787"})
        for resp in (read, write):
            assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
                403, "ORIGIN_NOT_ALLOWED", {"header": "Host", "value": "evil.example:8787"})

    def test_a_cross_origin_post_is_refused_and_stores_nothing(
            self, client: TestClient[Any], mock_cfg: ServerConfig) -> None:
        """``Origin: https://evil.example`` cannot create a Flow."""
        resp = client.post("/v1/flows", json={"ast_ir": {}},
                           headers={"Origin": "https://evil.example"})
        assert (resp.status_code, resp.json()["data"]) == (
            403, {"header": "Origin", "value": "https://evil.example"})
        assert table_counts(pathlib.Path(mock_cfg.data_dir) / "orchestrator.db")["flows"] == 0

    def test_same_origin_and_allowed_origins_pass(self, mock_cfg: ServerConfig) -> None:
        """The server's own origin and a configured one may POST."""
        cfg = msgspec.structs.replace(mock_cfg, allowed_origins=["http://localhost:5173"],
                                      allowed_hosts=["orch.internal"])
        with app_client(cfg) as c:
            own = c.post("/v1/flows", json={"ast_ir": {"a": 1}},
                         headers={"Origin": "http://127.0.0.1"})
            dev = c.post("/v1/flows", json={"ast_ir": {"a": 2}},
                         headers={"Origin": "http://localhost:5173"})
            named = c.get("/v1/pools", headers={"Host": "orch.internal"})
        assert (own.status_code, dev.status_code, named.status_code) == (201, 201, 200)

    def test_with_tokens_any_host_and_origin_may_call(self, mock_cfg: ServerConfig) -> None:
        """Bearer tokens already stop browsers; the guards stand aside."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"tok-a": "alpha"})
        with app_client(cfg) as c:
            resp = c.post("/v1/flows", json={"ast_ir": {}},
                          headers={"Host": "orch.example.com", "Origin": "https://x.example",
                                   "Authorization": "Bearer tok-a"})
        assert resp.status_code == 201


class TestMockWithConfig:
    """``serve --mock --config FILE`` keeps FILE and replaces only its pools [NERVE-4052]."""

    def test_auth_tokens_and_limits_survive_mock(self, tmp_path: pathlib.Path) -> None:
        """The tokens of the file are kept; the pools are the mock's."""
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps({"pools": [], "auth_tokens": {"t": "alpha"},
                                    "max_json_depth": 12}))
        args = argparse.Namespace(config=str(path), mock=True, host=None, port=None,
                                  data_dir=None)
        cfg = _config(args)
        assert (cfg.auth_tokens, cfg.max_json_depth, [p.engine for p in cfg.pools]) == (
            {"t": "alpha"}, 12, ["mock"])


class TestCrossReferences:
    """A body that names another tenant's or another Run's object is answered as an
    unknown id, byte for byte [NERVE-4051]."""

    @pytest.fixture
    def two(self, mock_cfg: ServerConfig) -> Iterator[tuple[TestClient[Any], dict[str, str]]]:
        """Tenant alpha's step and tenant beta's run on one server."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"ta": "alpha", "tb": "beta"})
        with app_client(cfg) as c:
            out: dict[str, str] = {}
            for tok, who in (("ta", "alpha"), ("tb", "beta")):
                h = {"Authorization": f"Bearer {tok}"}
                flow = c.post("/v1/flows", json={"ast_ir": {}}, headers=h).json()["flow_id"]
                run = c.post(f"/v1/flows/{flow}/runs", json={"mode": "record"},
                             headers=h).json()["run_id"]
                step = c.post(f"/v1/runs/{run}/steps", headers=h,
                              json=llm_step(f"{who}-1", model=MOCK_MODEL)).json()["step_id"]
                out |= {f"{who}_run": run, f"{who}_step": step}
            yield c, out

    def test_fact_naming_another_tenants_step_answers_like_an_unknown_step(
            self, two: tuple[TestClient[Any], dict[str, str]]) -> None:
        """Beta's fact citing alpha's step, and citing a made-up step, get the same body
        apart from the id itself."""
        c, ids = two
        h = {"Authorization": "Bearer tb"}
        fact = {"type": "note", "schema_uri": BUILTIN_FACT_SCHEMA, "data": {}}

        def answer(step_id: str) -> tuple[int, bytes]:
            r = c.post(f"/v1/runs/{ids['beta_run']}/facts", headers=h,
                       json={**fact, "step_id": step_id})
            return r.status_code, r.content.replace(step_id.encode(), b"<id>")

        foreign = answer(ids["alpha_step"])
        unknown = answer("stp_" + "0" * 26)
        assert foreign == unknown
        assert foreign[0] == 404

    def test_checkpoint_citing_another_tenants_step_answers_like_an_unknown_step(
            self, two: tuple[TestClient[Any], dict[str, str]]) -> None:
        """Beta's checkpoint citing alpha's step is refused as a made-up step is, and
        stores nothing."""
        c, ids = two
        h = {"Authorization": "Bearer tb"}

        def answer(step_id: str) -> tuple[int, bytes]:
            r = c.post(f"/v1/runs/{ids['beta_run']}/checkpoint", headers=h,
                       json={"snapshot": {"pc": 1}, "step_id": step_id})
            return r.status_code, r.content.replace(step_id.encode(), b"<id>")

        assert answer(ids["alpha_step"]) == answer("stp_" + "0" * 26)
        assert answer(ids["alpha_step"])[0] == 404
        listed = c.get(f"/v1/runs/{ids['beta_run']}/checkpoints", headers=h).json()
        own = c.post(f"/v1/runs/{ids['beta_run']}/checkpoint", headers=h,
                     json={"snapshot": {"pc": 1}, "step_id": ids["beta_step"]})
        assert (listed, own.status_code) == ([], 201)


def test_check_json_value_is_iterative() -> None:
    """A value nested 100,000 levels is measured without recursion [NERVE-4032]."""
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(Exception, match="deeper than 64 levels"):
        check_json_value(value, 64)
