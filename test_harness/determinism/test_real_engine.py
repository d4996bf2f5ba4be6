"""Real-engine determinism: record → strict_replay is byte-identical (NERVE-4021, NERVE-4022).

Runs on llama.cpp with SmolLM2-135M-Instruct: 16 seeds x 2 prompts x temperatures 0 and
0.8. Every strict_replay token stream must equal its recording byte for byte (text bytes,
token ids, indices); a changed seed, params or model hash is refused before ``started``;
``replay`` sends zero requests to the engine. Grammar-constrained ``llm_plan`` and
``response_contract`` Steps (6 plans, 4 contract calls) validate and strict-replay
byte for byte right after their recording.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
from typing import Any, ClassVar

import httpx
import msgspec
import pytest

from orchestrator_core.config import ModelConfig, default_config
from test_harness.support import REAL_MODEL, http_run_step, server_process
from worker_adapters.llamacpp import default_model_path

pytestmark = pytest.mark.engine

SEEDS = list(range(1, 17))
PROMPTS = [
    "Write one sentence about the sea.",
    "List three prime numbers and say why they are prime.",
]
TEMPERATURES = [0.0, 0.8]
MAX_TOKENS = 24


def _body(seed: int, p: int, temp: float) -> dict[str, Any]:
    return {"type": "llm_call", "client_token": f"s{seed}-p{p}-t{temp}",
            "input": {"model": REAL_MODEL,
                      "messages": [{"role": "user", "content": PROMPTS[p]}],
                      "params": {"temperature": temp, "seed": seed,
                                 "max_tokens": MAX_TOKENS}}}


def _new_run(http: httpx.Client, **fields: Any) -> httpx.Response:
    flow = http.post("/v1/flows", json={"ast_ir": {"suite": "determinism"}}).json()
    return http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 11, **fields})


def _tokens(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"] for f in frames if f["event"] == "token"]


def _engine_requests(http: httpx.Client) -> int:
    return sum(r["requests"] for p in http.get("/v1/pools").json() for r in p["replicas"])


@pytest.fixture(scope="module")
def recording(real_http: httpx.Client) -> dict[str, Any]:
    """One record run holding all 64 cases."""
    resp = _new_run(real_http)
    assert resp.status_code == 201, resp.text
    run = resp.json()
    tokens: dict[str, list[str]] = {}
    for seed in SEEDS:
        for p in range(len(PROMPTS)):
            for temp in TEMPERATURES:
                body = _body(seed, p, temp)
                sub, frames = http_run_step(real_http, run["run_id"], body)
                assert sub.status_code == 201, sub.text
                assert frames[-1]["event"] == "end", frames[-1]
                tokens[body["client_token"]] = _tokens(frames)
    return {"run": run, "flow_id": run["flow_id"], "tokens": tokens}


class TestStrictReplay:
    """strict_replay re-executes inference and must match the recording byte for byte."""

    def test_every_case_is_byte_identical(self, real_http: httpx.Client,
                                          recording: dict[str, Any]) -> None:
        """64 cases (16 seeds x 2 prompts x 2 temperatures) match token by token."""
        resp = real_http.post(f"/v1/flows/{recording['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": recording["run"]["run_id"]})
        assert resp.status_code == 201, resp.text
        run_id = resp.json()["run_id"]
        mismatches = []
        for seed in SEEDS:
            for p in range(len(PROMPTS)):
                for temp in TEMPERATURES:
                    body = _body(seed, p, temp)
                    sub, frames = http_run_step(real_http, run_id, body)
                    assert sub.status_code == 201, sub.text
                    if frames[-1]["event"] != "end" or \
                            _tokens(frames) != recording["tokens"][body["client_token"]]:
                        mismatches.append((body["client_token"], frames[-1]["data"]))
        assert mismatches == []
        assert len(recording["tokens"]) == 64
        assert all(len(t) > 0 for t in recording["tokens"].values())

    def test_sampling_at_0_8_depends_on_the_seed(self, recording: dict[str, Any]) -> None:
        """The suite is not vacuous: at temperature 0.8 different seeds give different text."""
        outs = {tuple(recording["tokens"][f"s{s}-p0-t0.8"]) for s in SEEDS}
        assert len(outs) > 1

    def test_a_changed_seed_is_refused_before_started(self, real_http: httpx.Client,
                                                      recording: dict[str, Any]) -> None:
        """A run seed or a step seed that differs is DETERMINISM_INPUTS_DIFFER."""
        resp = real_http.post(f"/v1/flows/{recording['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": recording["run"]["run_id"], "seed": 12})
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert resp.json()["data"]["fields"] == {"seed": {"recorded": 11, "current": 12}}
        run_id = real_http.post(f"/v1/flows/{recording['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": recording["run"]["run_id"]}).json()["run_id"]
        body = _body(1, 0, 0.8)
        body["input"]["params"]["seed"] = 2
        resp = real_http.post(f"/v1/runs/{run_id}/steps", json=body)
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert set(resp.json()["data"]["fields"]) == {"seed"}
        assert real_http.get(f"/v1/runs/{run_id}").json()["steps"] == {}

    def test_changed_params_are_refused_before_started(self, real_http: httpx.Client,
                                                       recording: dict[str, Any]) -> None:
        """Another temperature or max_tokens changes params_hash and is refused."""
        run_id = real_http.post(f"/v1/flows/{recording['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": recording["run"]["run_id"]}).json()["run_id"]
        body = _body(1, 1, 0.0)
        body["input"]["params"]["max_tokens"] = MAX_TOKENS + 1
        resp = real_http.post(f"/v1/runs/{run_id}/steps", json=body)
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert set(resp.json()["data"]["fields"]) == {"params_hash"}


class TestReplay:
    """replay serves the recording and never touches the engine."""

    def test_replay_makes_zero_engine_requests(self, real_http: httpx.Client,
                                               recording: dict[str, Any]) -> None:
        """Counted at the replica adapter, through GET /v1/pools."""
        run_id = real_http.post(f"/v1/flows/{recording['flow_id']}/runs", json={
            "mode": "replay", "replay_of": recording["run"]["run_id"]}).json()["run_id"]
        before = _engine_requests(real_http)
        for seed in SEEDS[:4]:
            body = _body(seed, 1, 0.8)
            _sub, frames = http_run_step(real_http, run_id, body)
            assert _tokens(frames) == recording["tokens"][body["client_token"]]
        assert _engine_requests(real_http) == before


class TestPools:
    """GET /v1/pools describes the real CPU pool."""

    def test_cpu_pool_lists_engine_fingerprint_model_hash_slots_health(
            self, real_http: httpx.Client) -> None:
        """The pool shows what makes its output reproducible."""
        (pool,) = real_http.get("/v1/pools").json()
        sha = hashlib.sha256(default_model_path().read_bytes()).hexdigest()
        assert (pool["pool_id"], pool["kind"]) == ("cpu-0", "cpu")
        assert pool["engine"]["name"] == "llama.cpp"
        assert pool["engine"]["version"].startswith("llama-cpp-python ")
        assert pool["engine"]["build_fingerprint"].startswith("b3:")
        settings = pool["engine"]["settings"]
        assert {k: settings[k] for k in settings if k not in ("library_sha256", "env")} == {
            "n_ctx": 2048, "n_threads": 1, "n_threads_batch": 1, "n_batch": 512,
            "n_ubatch": 512, "flash_attn": False, "type_k": "f16", "type_v": "f16",
            "last_n_tokens_size": 64, "logits_all": False,
            "worker": "orchestratord llamacpp_worker 1"}
        assert settings["env"] == {
            "LANG": "C", "LC_ALL": "C", "OMP_NUM_THREADS": "1", "PYTHONCOERCECLOCALE": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONNOUSERSITE": "1",
            "PYTHONUTF8": "1"}
        assert settings["library_sha256"].startswith("b3:")
        assert (pool["engine"]["batch_invariant"], pool["engine"]["isolated_slots"]) == (
            False, True)
        assert pool["models"][0] == {"id": REAL_MODEL, "family": "smollm2",
                                     "context_tokens": 2048, "sha256": "sha256:" + sha,
                                     "features": ["completion", "chat"]}
        (rep,) = pool["replicas"]
        assert (rep["replica_id"], rep["slots"], rep["health"]) == ("cpu-0/r0", 1, "ready")
        assert "AVX2 = 1" in pool["capabilities"]["cpu_features"]


def _restart_and_strict(cfg: Any, data: pathlib.Path, run: dict[str, Any],
                        body: dict[str, Any]) -> httpx.Response:
    """Start a server on the same store with ``cfg`` and submit ``body`` to a strict_replay
    run of ``run``."""
    with server_process(cfg, data) as (_p, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        strict = http.post(f"/v1/flows/{run['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": run["run_id"]}).json()
        resp = http.post(f"/v1/runs/{strict['run_id']}/steps", json=body)
        assert http.get(f"/v1/runs/{strict['run_id']}").json()["steps"] == {}
        return resp


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One step recorded on the default config, with engine-looking variables in the
    server's own environment that must not reach the replica."""
    data = pathlib.Path(tmp_path_factory.mktemp("hermetic"))
    body = _body(3, 0, 0.8)
    with pytest.MonkeyPatch.context() as mp:
        for name in ("FLASH_ATTN", "N_UBATCH", "TYPE_K", "LLAMA_ARG_FLASH_ATTN",
                     "GGML_SCHED_MAX_COPIES"):
            mp.setenv(name, "1")
        with server_process(default_config(data_dir=str(data)), data) as (_p, url), \
                httpx.Client(base_url=url, timeout=120.0) as http:
            run = _new_run(http).json()
            _sub, frames = http_run_step(http, run["run_id"], body)
            build = http.get("/v1/pools").json()[0]["engine"]["build_fingerprint"]
    assert frames[-1]["event"] == "end"
    return {"data": data, "run": run, "body": body, "frames": frames, "build": build}


class TestHermeticEngine:
    """A replica sees only its pool's settings and environment (PLACE-5004)."""

    def test_the_server_environment_does_not_reach_the_replica(
            self, real_http: httpx.Client, recorded: dict[str, Any]) -> None:
        """FLASH_ATTN, LLAMA_ARG_* and GGML_* in the server's environment change nothing:
        the fingerprint equals that of a server started without them."""
        assert recorded["build"] == real_http.get("/v1/pools").json()[0]["engine"][
            "build_fingerprint"]

    def test_an_extra_pool_environment_variable_is_refused_naming_it(
            self, recorded: dict[str, Any]) -> None:
        """The pool's env is part of the build: strict_replay is refused before started."""
        base = default_config(data_dir=str(recorded["data"]))
        cfg = msgspec.structs.replace(base, pools=[msgspec.structs.replace(
            base.pools[0], env={"GGML_SCHED_MAX_COPIES": "1"})])
        resp = _restart_and_strict(cfg, recorded["data"], recorded["run"], recorded["body"])
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert set(resp.json()["data"]["fields"]) == {"engine_build"}
        assert resp.json()["data"]["fields"]["engine_build"]["settings"] == {
            "env.GGML_SCHED_MAX_COPIES": {"recorded": None, "current": "1"}}

    def test_a_changed_engine_setting_is_refused_naming_it(
            self, recorded: dict[str, Any]) -> None:
        """Another n_batch (and so n_ubatch) changes the build: refused, both named."""
        base = default_config(data_dir=str(recorded["data"]))
        cfg = msgspec.structs.replace(base, pools=[msgspec.structs.replace(
            base.pools[0], options={"n_threads": 1, "n_batch": 256})])
        resp = _restart_and_strict(cfg, recorded["data"], recorded["run"], recorded["body"])
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert resp.json()["data"]["fields"]["engine_build"]["settings"] == {
            "n_batch": {"recorded": 512, "current": 256},
            "n_ubatch": {"recorded": 512, "current": 256}}
        assert resp.json()["message"] == ("strict_replay refused: determinism inputs "
                                          "differ: engine_build (n_batch, n_ubatch)")

    def test_the_unchanged_config_replays_after_the_restart(
            self, recorded: dict[str, Any]) -> None:
        """The control: same config, same store, strict_replay matches."""
        cfg = default_config(data_dir=str(recorded["data"]))
        with server_process(cfg, recorded["data"]) as (_p, url), \
                httpx.Client(base_url=url, timeout=120.0) as http:
            run = recorded["run"]
            strict = http.post(f"/v1/flows/{run['flow_id']}/runs", json={
                "mode": "strict_replay", "replay_of": run["run_id"]}).json()
            _s, frames = http_run_step(http, strict["run_id"], recorded["body"])
        assert _tokens(frames) == _tokens(recorded["frames"])


def test_a_changed_model_hash_is_refused_before_started(tmp_path: pathlib.Path) -> None:
    """After the weights file changes (same model id), strict_replay is refused."""
    data = tmp_path / "data"
    body = _body(3, 0, 0.8)
    with server_process(default_config(data_dir=str(data)), data) as (_p, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        run = _new_run(http).json()
        _sub, frames = http_run_step(http, run["run_id"], body)
        assert frames[-1]["event"] == "end"
    altered = tmp_path / "altered.gguf"
    shutil.copyfile(default_model_path(), altered)
    with altered.open("ab") as f:
        f.write(b"\0")
    base = default_config(data_dir=str(data))
    pool = base.pools[0]
    model = ModelConfig(id=REAL_MODEL, path=str(altered), family="smollm2",
                        context_tokens=2048)
    import msgspec

    cfg = msgspec.structs.replace(base, pools=[msgspec.structs.replace(pool, models=[model])])
    with server_process(cfg, data) as (_p, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        strict = http.post(f"/v1/flows/{run['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": run["run_id"]}).json()
        resp = http.post(f"/v1/runs/{strict['run_id']}/steps", json=body)
        assert (resp.status_code, resp.json()["code"]) == (409, "DETERMINISM_INPUTS_DIFFER")
        assert set(resp.json()["data"]["fields"]) == {"model_hash"}
        assert json.dumps(resp.json()["data"]["fields"]["model_hash"]["recorded"]) != \
            json.dumps(resp.json()["data"]["fields"]["model_hash"]["current"])


class TestImmediateReplay:
    """Replaying a step right after recording it, while the engine still holds the
    prompt in its prefix cache, is byte-identical too (NERVE-4021)."""

    PROMPTS = ("Give three keywords about the sea as JSON.", "Write one sentence about the sea.",
               "List three prime numbers.", "Name a colour.",
               "Summarise: the cat sat on the mat.", "What is 2+2?")

    def test_record_then_strict_replay_at_once(self, real_http: httpx.Client) -> None:
        """12 cases, each recorded and strict-replayed back to back."""
        run = _new_run(real_http).json()
        strict = real_http.post(f"/v1/flows/{run['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": run["run_id"]}).json()
        diverged = []
        for n, prompt in enumerate(self.PROMPTS):
            for temp in (0.0, 0.8):
                body = {"type": "llm_call", "client_token": f"now-{n}-{temp}",
                        "input": {"model": REAL_MODEL,
                                  "messages": [{"role": "user", "content": prompt}],
                                  "params": {"temperature": temp, "max_tokens": 48}}}
                _s, rec = http_run_step(real_http, run["run_id"], body)
                _s, rep = http_run_step(real_http, strict["run_id"], body)
                assert rec[-1]["event"] == "end"
                if rep[-1]["event"] != "end" or _tokens(rep) != _tokens(rec):
                    diverged.append((prompt, temp, rep[-1]["data"][:200]))
        assert diverged == []


class TestConstrainedDecoding:
    """Grammar-constrained Steps on the real engine (NERVE-4010, NERVE-4013): the output
    validates, and strict_replay right after the recording reproduces the tokens and
    the ``tool_suggest`` frames byte for byte."""

    TEXT: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["text"], "additionalProperties": False,
            "properties": {"text": {"type": "string", "maxLength": 80}}}
    CONTRACT: ClassVar[dict[str, Any]] = {
        "type": "object", "required": ["title", "keywords"],
                "additionalProperties": False,
                "properties": {"title": {"type": "string", "maxLength": 60},
                               "keywords": {"type": "array", "minItems": 3, "maxItems": 3,
                                            "items": {"type": "string", "maxLength": 20}}}}
    QUESTIONS = ("How many words are in 'the quick brown fox jumps'?",
                 "Compute the SHA-256 of the text 'hello world'.",
                 "Count the words of 'replay is byte exact' and hash it.")

    def _runs(self, http: httpx.Client) -> tuple[str, str]:
        flow = http.post("/v1/flows", json={"ast_ir": {"suite": "constrained"}, "tools": [
            {"name": "count_words", "executor": "wc", "parameters": self.TEXT,
             "description": "Count the words of a text."},
            {"name": "sha256", "executor": "sha256", "parameters": self.TEXT,
             "description": "SHA-256 digest of a text."}]}).json()
        rec = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 5}).json()
        strict = http.post(f"/v1/flows/{flow['flow_id']}/runs", json={
            "mode": "strict_replay", "replay_of": rec["run_id"]}).json()
        return rec["run_id"], strict["run_id"]

    def _pair(self, http: httpx.Client, runs: tuple[str, str], body: dict[str, Any]) -> \
            tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        _s, rec = http_run_step(http, runs[0], body)
        _s, rep = http_run_step(http, runs[1], body)
        assert rec[-1]["event"] == "end", rec[-1]["data"][:300]
        assert rep[-1]["event"] == "end", rep[-1]["data"][:300]
        return rec, rep

    def test_plans_validate_and_replay_byte_for_byte(self, real_http: httpx.Client) -> None:
        """6 plans (3 questions x temperatures 0 and 0.8): every suggestion is valid."""
        runs = self._runs(real_http)
        for n, question in enumerate(self.QUESTIONS):
            for temp in (0.0, 0.8):
                rec, rep = self._pair(real_http, runs, {
                    "type": "llm_plan", "client_token": f"plan-{n}-{temp}",
                    "input": {"model": REAL_MODEL, "max_intents": 2,
                              "messages": [{"role": "user", "content": question}],
                              "params": {"temperature": temp, "max_tokens": 96}}})
                sugs = [f["data"] for f in rec if f["event"] == "tool_suggest"]
                assert sugs and all(json.loads(s)["valid"] for s in sugs), sugs
                assert _tokens(rep) == _tokens(rec)
                assert [f["data"] for f in rep if f["event"] == "tool_suggest"] == sugs

    def test_contracts_validate_and_replay_byte_for_byte(self, real_http: httpx.Client) -> None:
        """4 contract calls (2 seeds x temperatures 0 and 0.8): the value is recorded."""
        runs = self._runs(real_http)
        for seed in (1, 2):
            for temp in (0.0, 0.8):
                rec, rep = self._pair(real_http, runs, {
                    "type": "llm_call", "client_token": f"contract-{seed}-{temp}",
                    "input": {"model": REAL_MODEL, "response_contract": self.CONTRACT,
                              "messages": [{"role": "user", "content":
                                            "Title and three keywords for a text about "
                                            "deterministic replay, as JSON."}],
                              "params": {"temperature": temp, "seed": seed,
                                         "max_tokens": 80}}})
                value = json.loads(rec[-1]["data"])["output"]["value"]
                assert set(value) == {"title", "keywords"} and len(value["keywords"]) == 3
                assert _tokens(rep) == _tokens(rec)
                assert json.loads(rep[-1]["data"])["output"]["value"] == value
