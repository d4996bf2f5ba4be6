"""Remote replicas provisioned and drained at run time, against fake ``llama-server``s on
loopback ports (PLACE-5100..PLACE-5110)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from contracts.errors import InvalidParams, PolicyDenied
from orchestrator_core.config import ModelConfig, PoolConfig, ServerConfig
from orchestrator_core.provision_policy import ProvisioningConfig, check_engine_url
from orchestratord.client_sync import Client
from test_harness.fake_llama import EngineFactory, engine_servers
from test_harness.support import app_client, llm_step, parse_sse

REMOTE = "remote:fake"


@pytest.fixture
def engines() -> Iterator[EngineFactory]:
    """Fake llama-servers, stopped at the end (:func:`engine_servers`)."""
    with engine_servers() as start:
        yield start


def _config(mock_cfg: ServerConfig, url: str, **provisioning: Any) -> ServerConfig:
    """The mock pool and ``remote-0``, one configured replica at ``url``; provisioning on
    for the ``default`` tenant unless ``provisioning`` says otherwise."""
    pool = PoolConfig(pool_id="remote-0", engine="openai_http", urls=[url],
                      models=[ModelConfig(id=REMOTE, context_tokens=4096)],
                      options={"dialect": "llama-server"})
    prov = ProvisioningConfig(**{"enabled": True, "operator_tenants": ["default"],
                                 **provisioning})
    return msgspec.structs.replace(mock_cfg, pools=[*mock_cfg.pools, pool],
                                   provisioning=prov)


def _run(client: Any) -> str:
    flow = client.post("/v1/flows", json={"ast_ir": {"provision": 1}}).json()
    return str(client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1}).json()
               ["run_id"])


def _pinned(token: str, pool_id: str, replica_id: str) -> dict[str, Any]:
    body = llm_step(token, model=REMOTE, max_tokens=2)
    body["placement"] = {"strategy": "pin", "pool_id": pool_id, "replica_id": replica_id}
    return body


def _frames(client: Any, step_id: str) -> list[dict[str, Any]]:
    with client.stream("GET", f"/v1/steps/{step_id}/stream") as s:
        return [f for f in parse_sse(b"".join(s.iter_bytes())) if f["id"] is not None]


def _health(client: Any, pool_id: str) -> dict[str, str]:
    pool = client.get(f"/v1/pools/{pool_id}").json()
    return {r["replica_id"]: r["health"] for r in pool["replicas"]}


def _queued(client: Any, replica_id: str) -> int:
    pool = client.get(f"/v1/pools/{replica_id.split('/')[0]}").json()
    return int(next(r["queued"] for r in pool["replicas"] if r["replica_id"] == replica_id))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestEngineUrlRule:
    """The host rule a provisioned replica's URL passes (SSRF) [PLACE-5103]."""

    @pytest.mark.parametrize(("url", "allowed", "base"), [
        ("http://127.0.0.1:8080/", [], "http://127.0.0.1:8080"),
        ("https://LOCALHOST.:9", [], "https://localhost:9"),
        ("http://[::1]:7", [], "http://[::1]:7"),
        ("http://gpu-3.lan:8000", ["GPU-3.lan"], "http://gpu-3.lan:8000")])
    def test_loopback_and_listed_hosts_pass_normalized(self, url: str, allowed: list[str],
                                                       base: str) -> None:
        """Loopback names and addresses, and listed hosts, give ``scheme://host[:port]``."""
        assert check_engine_url(url, allowed) == base

    @pytest.mark.parametrize("url", [
        "http://169.254.169.254/", "http://[fe80::1]:80", "http://[::ffff:169.254.169.254]",
        "http://[fd00:ec2::254]", "http://metadata.google.internal", "http://0.0.0.0:80",
        "http://224.0.0.1"])
    def test_metadata_link_local_and_unspecified_hosts_are_refused_even_when_listed(
            self, url: str) -> None:
        """The allow-list cannot open a link-local, metadata or unspecified address."""
        host = url.split("//")[1].split("/")[0].rsplit(":", 1)[0] if "[" not in url else \
            url.split("[")[1].split("]")[0]
        with pytest.raises(PolicyDenied) as info:
            check_engine_url(url, [host])
        assert (info.value.data or {})["field"] == "url"

    @pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://2130706433/",
                                     "http://127.1/", "http://engine.example"])
    def test_unlisted_hosts_and_other_spellings_are_refused(self, url: str) -> None:
        """A host neither loopback nor listed is refused, other spellings of loopback
        included (no name is resolved)."""
        with pytest.raises(PolicyDenied) as info:
            check_engine_url(url, [])
        assert (info.value.data or {})["field"] == "url"

    @pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://u:p@127.0.0.1/",
                                     "http://127.0.0.1/v1", "http://127.0.0.1/?a=1",
                                     "127.0.0.1:80", "http://[::1", "http://127.0.0.1:99999",
                                     "http://127.0.0.1:0", "http://127.0.0.1:8080?",
                                     "http://127.0.0.1/\x00", "http://local host"])
    def test_anything_but_a_base_url_is_malformed(self, url: str) -> None:
        """Another scheme, user info, a path, a query, no host, a port out of range or a
        control character or space: 400 naming ``url``."""
        with pytest.raises(InvalidParams) as info:
            check_engine_url(url, [])
        assert info.value.data == {"field": "url"}


class TestProvisioningConfig:
    """The operator's provisioning settings [PLACE-5106]."""

    @pytest.mark.parametrize(("field", "value"), [("max_replicas", 0),
                                                  ("validate_timeout_ms", -1),
                                                  ("removed_kept", -1)])
    def test_a_limit_out_of_range_is_refused_naming_it(self, field: str, value: int) -> None:
        """A non-positive bound (a negative count of removed replicas kept) is refused."""
        with pytest.raises(InvalidParams) as info:
            msgspec.structs.replace(ProvisioningConfig(), **{field: value})
        assert info.value.data == {"field": f"provisioning.{field}"}

    def test_it_decodes_from_the_config_file_with_unknown_fields_refused(self) -> None:
        """``[provisioning]`` in TOML; an unknown key is refused."""
        cfg = msgspec.toml.decode(b'pools = []\n[provisioning]\nenabled = true\n'
                                  b'operator_tenants = ["ops"]\n', type=ServerConfig)
        assert (cfg.provisioning.enabled, cfg.provisioning.operator_tenants) == (True, ["ops"])
        with pytest.raises(msgspec.ValidationError):
            msgspec.toml.decode(b'pools = []\n[provisioning]\nopen = true\n',
                                type=ServerConfig)


class TestWhoMayProvision:
    """Off by default; operators only [PLACE-5101]."""

    def test_the_routes_are_refused_while_provisioning_is_off(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """A server with the default config answers 403 naming ``provisioning.enabled``."""
        url, _ = engines()
        cfg = msgspec.structs.replace(_config(mock_cfg, url), provisioning=ProvisioningConfig())
        with app_client(cfg) as client:
            prov = client.post("/v1/pools/provision", json={"url": url, "pool_id": "remote-0"})
            drain = client.post("/v1/pools/remote-0/replicas/r0/drain")
        for resp in (prov, drain):
            assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
                403, "POLICY_DENIED", {"field": "provisioning.enabled"})

    def test_a_tenant_that_is_not_an_operator_is_refused(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """Tenant ``alice`` gets 403 naming ``authorization``; tenant ``ops`` provisions;
        no token at all is 401."""
        url, _ = engines()
        second, _ = engines()
        cfg = msgspec.structs.replace(
            _config(mock_cfg, url, operator_tenants=["ops"]),
            auth_tokens={"t-alice": "alice", "t-ops": "ops"})
        body = {"url": second, "pool_id": "remote-0"}
        with app_client(cfg) as client:
            alice = client.post("/v1/pools/provision", json=body,
                                headers={"Authorization": "Bearer t-alice"})
            drain = client.post("/v1/pools/remote-0/replicas/r0/drain",
                                headers={"Authorization": "Bearer t-alice"})
            anonymous = client.post("/v1/pools/provision", json=body)
            ops = client.post("/v1/pools/provision", json=body,
                              headers={"Authorization": "Bearer t-ops"})
            health = {r["replica_id"]: r["health"] for r in client.get(
                "/v1/pools/remote-0", headers={"Authorization": "Bearer t-ops"}).json()[
                "replicas"]}
        for resp in (alice, drain):
            assert (resp.status_code, resp.json()["code"], resp.json()["data"]) == (
                403, "POLICY_DENIED", {"field": "authorization"})
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "UNAUTHORIZED")
        assert (ops.status_code, ops.headers["x-replica-id"]) == (201, "remote-0/r1")
        assert health == {"remote-0/r0": "ready", "remote-0/r1": "ready"}


class TestProvision:
    """A replica is validated before it takes traffic [PLACE-5100] [PLACE-5102]
    [PLACE-5104] [PLACE-5105] [PLACE-5107]."""

    def test_a_new_pool_takes_a_pinned_step_on_its_provisioned_replica(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5102] A new pool is created from the request; a Step pinned to its
        replica ends there, with the server's identity in its provenance."""
        url, _ = engines()
        second, handler = engines()
        with app_client(_config(mock_cfg, url)) as client:
            resp = client.post("/v1/pools/provision", json={
                "url": second + "/", "pool_id": "remote-new", "dialect": "llama-server",
                "model": {"id": REMOTE, "context_tokens": 4096}, "tags": {"site": "lab"},
                "expect_model": "/models/fake.gguf"})
            run_id = _run(client)
            step = client.post(f"/v1/runs/{run_id}/steps",
                               json=_pinned("p1", "remote-new", "remote-new/r0")).json()
            frames = _frames(client, step["step_id"])
        pool = resp.json()
        assert (resp.status_code, resp.headers["location"], pool["pool_id"], pool["tags"],
                pool["engine"]["version"], [r["health"] for r in pool["replicas"]]) == (
            201, "/v1/pools/remote-new", "remote-new", {"site": "lab"}, "b1-fake", ["ready"])
        end = json.loads(frames[-1]["data"])
        assert (frames[-1]["event"], end["provenance"]["pool_id"],
                end["provenance"]["replica_id"], handler.completions) == (
            "end", "remote-new", "remote-new/r0", ["/v1/completions"])

    def test_an_existing_pool_gains_a_replica_a_pinned_step_runs_on(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5105] The new replica is ``r1`` of ``remote-0``; a Step pinned to it
        reaches the new server and not the configured one."""
        url, configured = engines()
        second, provisioned = engines()
        with app_client(_config(mock_cfg, url)) as client:
            resp = client.post("/v1/pools/provision", json={"url": second,
                                                            "pool_id": "remote-0"})
            run_id = _run(client)
            step = client.post(f"/v1/runs/{run_id}/steps",
                               json=_pinned("p1", "remote-0", "remote-0/r1")).json()
            frames = _frames(client, step["step_id"])
        assert (resp.status_code, [r["replica_id"] for r in resp.json()["replicas"]]) == (
            201, ["remote-0/r0", "remote-0/r1"])
        assert (frames[-1]["event"], provisioned.completions, configured.completions) == (
            "end", ["/v1/completions"], [])

    @pytest.mark.parametrize(("attributes", "field", "differs"), [
        ({"build_info": "b2-other"}, "build_fingerprint", ["version"]),
        ({"model_path": "/models/other.gguf"}, "model", None)])
    def test_a_server_whose_identity_differs_from_the_pools_is_refused(
            self, mock_cfg: ServerConfig, engines: Any, attributes: dict[str, str],
            field: str, differs: list[str] | None) -> None:
        """[PLACE-5104] Another build or another model: 409 naming the field, and the
        pool keeps its one replica."""
        url, _ = engines()
        other, _ = engines(**attributes)
        with app_client(_config(mock_cfg, url)) as client:
            resp = client.post("/v1/pools/provision", json={"url": other,
                                                            "pool_id": "remote-0"})
            health = _health(client, "remote-0")
        body = resp.json()
        assert (resp.status_code, body["code"], body["data"]["field"],
                body["data"].get("differs")) == (409, "CONFLICT", field, differs)
        assert health == {"remote-0/r0": "ready"}

    def test_an_unexpected_model_and_refused_hosts_name_their_field(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5103] [PLACE-5107] ``expect_model`` that the server does not serve is
        409; a metadata address is 403; a closed port is 400; a pool field for an
        existing pool and a dialect that cannot tokenize are 400; each names its field."""
        url, _ = engines()
        second, _ = engines()
        new = {"pool_id": "remote-new", "dialect": "llama-server", "model": {"id": REMOTE}}
        with app_client(_config(mock_cfg, url)) as client:
            wrong = client.post("/v1/pools/provision", json={
                **new, "url": second, "expect_model": "/models/big.gguf"})
            metadata = client.post("/v1/pools/provision", json={
                **new, "url": "http://169.254.169.254:80"})
            closed = client.post("/v1/pools/provision", json={
                **new, "url": f"http://127.0.0.1:{_closed_port()}"})
            fixed = client.post("/v1/pools/provision", json={
                "url": second, "pool_id": "remote-0", "dialect": "vllm"})
            no_tokenizer = client.post("/v1/pools/provision", json={
                **new, "url": second, "dialect": "openai"})
            pools = [p["pool_id"] for p in client.get("/v1/pools").json()]
        assert [(r.status_code, r.json()["code"], r.json()["data"]["field"])
                for r in (wrong, metadata, closed, fixed, no_tokenizer)] == [
            (409, "CONFLICT", "expect_model"), (403, "POLICY_DENIED", "url"),
            (400, "INVALID_PARAMS", "url"), (400, "INVALID_PARAMS", "dialect"),
            (400, "INVALID_PARAMS", "dialect")]
        assert pools == ["mock-0", "remote-0"]

    def test_a_server_that_never_answers_is_refused_in_bounded_time(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5107] A port that accepts and never answers: 400 naming ``url`` once
        ``validate_timeout_ms`` has passed, not a stall."""
        url, _ = engines()
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            with app_client(_config(mock_cfg, url, validate_timeout_ms=300)) as client:
                began = time.monotonic()
                resp = client.post("/v1/pools/provision", json={
                    "url": silent_url, "pool_id": "remote-new", "dialect": "llama-server",
                    "model": {"id": "remote:new"}})
                took = time.monotonic() - began
        assert (resp.status_code, resp.json()["data"], took < 5) == (
            400, {"field": "url"}, True)
        assert resp.json()["message"] == ("the engine server did not answer as a "
                                          "llama-server server: no answer within 300 ms")

    def test_the_live_provisioned_replicas_are_bounded(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5106] Past ``max_replicas`` live provisioned replicas: 409."""
        url, _ = engines()
        second, _ = engines()
        with app_client(_config(mock_cfg, url, max_replicas=1)) as client:
            first = client.post("/v1/pools/provision", json={"url": second,
                                                             "pool_id": "remote-0"})
            more = client.post("/v1/pools/provision", json={"url": second,
                                                            "pool_id": "remote-0"})
        assert (first.status_code, more.status_code, more.json()["data"]) == (
            201, 409, {"field": "pool_id", "limit": 1})


class TestDrain:
    """Draining: no new placements, placed Steps finish, then removed [PLACE-5108]
    [PLACE-5109]."""

    def test_a_step_running_on_a_draining_replica_finishes_and_new_ones_go_elsewhere(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5108] [PLACE-5109] While a Step streams on ``r1`` and another waits for
        its slot, the drain answers ``draining``; a Step pinned there is refused, one
        pinned to the pool runs on ``r0``; both placed Steps end, then ``r1`` is
        ``removed`` in the pool's view."""
        url, configured = engines()
        gate = threading.Event()
        second, provisioned = engines(gate=gate)
        with app_client(_config(mock_cfg, url)) as client:
            assert client.post("/v1/pools/provision", json={
                "url": second, "pool_id": "remote-0"}).status_code == 201
            run_id = _run(client)
            running = client.post(f"/v1/runs/{run_id}/steps",
                                  json=_pinned("p1", "remote-0", "remote-0/r1")).json()
            queued = client.post(f"/v1/runs/{run_id}/steps",
                                 json=_pinned("p1b", "remote-0", "remote-0/r1")).json()
            deadline = time.monotonic() + 10
            while not (provisioned.completions and _queued(client, "remote-0/r1")) and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            drain = client.post("/v1/pools/remote-0/replicas/r1/drain")
            during = _health(client, "remote-0")
            pinned = client.post(f"/v1/runs/{run_id}/steps",
                                 json=_pinned("p2", "remote-0", "remote-0/r1"))
            auto = client.post(f"/v1/runs/{run_id}/steps", json={
                **llm_step("a1", model=REMOTE, max_tokens=2),
                "placement": {"strategy": "pin", "pool_id": "remote-0"}}).json()
            auto_frames = _frames(client, auto["step_id"])
            gate.set()
            frames = _frames(client, running["step_id"])
            queued_frames = _frames(client, queued["step_id"])
            while _health(client, "remote-0")["remote-0/r1"] != "removed" and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            after = _health(client, "remote-0")
            again = client.post("/v1/pools/remote-0/replicas/r1/drain")
            unknown = client.post("/v1/pools/remote-0/replicas/r9/drain")
            ready = client.get("/ready").status_code
        assert (drain.status_code, drain.json()["health"], during) == (
            202, "draining", {"remote-0/r0": "ready", "remote-0/r1": "draining"})
        assert (pinned.status_code, pinned.json()["code"]) == (503, "POOL_UNREADY")
        assert (json.loads(auto_frames[-1]["data"])["provenance"]["replica_id"],
                configured.completions) == ("remote-0/r0", ["/v1/completions"])
        assert (frames[-1]["event"], [f["event"] for f in frames].count("token")) == ("end", 1)
        assert (queued_frames[-1]["event"], provisioned.completions) == (
            "end", ["/v1/completions", "/v1/completions"])
        assert after == {"remote-0/r0": "ready", "remote-0/r1": "removed"}
        assert (again.status_code, again.json()["health"]) == (202, "removed")
        assert (unknown.status_code, unknown.json()["data"]) == (404, {"field": "replica"})
        assert ready == 200

    def test_a_pool_drained_of_every_replica_does_not_hold_readiness(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5109] A provisioned pool whose only replica is removed stays listed,
        and ``/ready`` still answers 200."""
        url, _ = engines()
        second, _ = engines()
        with app_client(_config(mock_cfg, url)) as client:
            client.post("/v1/pools/provision", json={
                "url": second, "pool_id": "remote-new", "dialect": "llama-server",
                "model": {"id": "remote:new"}})
            client.post("/v1/pools/remote-new/replicas/r0/drain")
            deadline = time.monotonic() + 10
            while _health(client, "remote-new") != {"remote-new/r0": "removed"} and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            health = _health(client, "remote-new")
            ready = client.get("/ready")
        assert (health, ready.status_code) == ({"remote-new/r0": "removed"}, 200)

    def test_removed_replicas_kept_in_the_view_are_bounded(
            self, mock_cfg: ServerConfig, engines: Any) -> None:
        """[PLACE-5106] With ``removed_kept`` 0, a removed replica leaves the view."""
        url, _ = engines()
        second, _ = engines()
        with app_client(_config(mock_cfg, url, removed_kept=0)) as client:
            client.post("/v1/pools/provision", json={"url": second, "pool_id": "remote-0"})
            client.post("/v1/pools/remote-0/replicas/r1/drain")
            deadline = time.monotonic() + 10
            while _health(client, "remote-0") != {"remote-0/r0": "ready"} and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            health = _health(client, "remote-0")
        assert health == {"remote-0/r0": "ready"}

    def test_the_clients_provision_and_drain(self, mock_cfg: ServerConfig,
                                             engines: Any) -> None:
        """[PLACE-5110] ``Client.provision_replica`` returns the pool, ``drain_replica``
        the replica, ``draining``."""
        url, _ = engines()
        second, _ = engines()
        with app_client(_config(mock_cfg, url)) as http:
            def relay(request: httpx.Request) -> httpx.Response:
                resp = http.request(request.method, request.url.path,
                                    content=request.content, headers=dict(request.headers))
                return httpx.Response(resp.status_code, content=resp.content,
                                      headers=resp.headers)

            with Client("http://127.0.0.1", transport=httpx.MockTransport(relay)) as client:
                pool = client.provision_replica(url=second, pool_id="remote-0")
                replica = client.drain_replica("remote-0", "r1")
        assert ([r.replica_id for r in pool.replicas], replica.replica_id,
                replica.health) == (["remote-0/r0", "remote-0/r1"], "remote-0/r1", "draining")
