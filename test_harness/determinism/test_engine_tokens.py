"""Token frames are engine tokens, and replay holds with concurrent slots (STREAM-2006,
NERVE-4021, PLACE-5005), on llama.cpp with SmolLM2-135M-Instruct.

The matrix: seeds x 4 raw prompts (Japanese, French with accents, two English) x
temperatures 0, 0.8 and 1.2 (top_p 0.95), 24 tokens each, on one replica with
``slots_per_replica = 2``. CI runs 3 seeds (36 cases); ``ORCH_DETERMINISM_FULL=1`` (see
``tools/determinism_matrix.sh``) runs 32 seeds (384 cases).

* Sequential: record -> strict_replay -> replay are byte-identical, and every step equals
  the engine called directly in the test process: the same token ids, the same bytes,
  no id -1, ``tokens_out`` = the engine's token count, the text = the engine's completion
  (no U+FFFD the engine's bytes do not hold).
* Concurrent: the same cases recorded and strict-replayed by 4 clients at once on the
  2-slot replica equal the sequential recording.
* 20 loops of 2, and of 4, concurrent clients, recording and strict-replaying: no
  REPLAY_DIVERGED.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest

from orchestrator_core.config import default_config
from test_harness.determinism.engine_reference import Expected, Reference, decode_valid
from test_harness.support import REAL_MODEL, http_run_step, server_process
from worker_adapters.llamacpp import default_model_path

pytestmark = pytest.mark.engine

FULL = os.environ.get("ORCH_DETERMINISM_FULL") == "1"
SEEDS = list(range(1, 33)) if FULL else [1, 2, 3]
PROMPTS = [
    "日本の首都について一文で説明してください。",
    "Écrivez une phrase sur la mer, les élèves et l'été à Noël.",
    "Write one sentence about the sea.",
    "List three prime numbers and say why they are prime.",
]
TEMPERATURES = [0.0, 0.8, 1.2]
MAX_TOKENS = 24
CASES = [(s, p, t) for s in SEEDS for p in range(len(PROMPTS)) for t in TEMPERATURES]

Result = tuple[list[str], dict[str, Any]]
"""``(token frame data, end frame data)`` of one step."""


def _params(seed: int, temp: float) -> dict[str, Any]:
    return {"temperature": temp, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
            "repeat_penalty": 1.0, "seed": seed, "max_tokens": MAX_TOKENS}


def _body(case: tuple[int, int, float], prefix: str = "") -> dict[str, Any]:
    seed, p, temp = case
    return {"type": "llm_call", "client_token": f"{prefix}s{seed}-p{p}-t{temp}",
            "input": {"model": REAL_MODEL, "prompt": PROMPTS[p],
                      "params": _params(seed, temp)}}


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real server with one llama.cpp replica of 2 slots."""
    data = pathlib.Path(tmp_path_factory.mktemp("two-slots"))
    base = default_config(data_dir=str(data))
    cfg = msgspec.structs.replace(base, pools=[
        msgspec.structs.replace(base.pools[0], slots_per_replica=2)])
    with server_process(cfg, data) as (_p, url), \
            httpx.Client(base_url=url, timeout=300.0) as http:
        yield http


def _run(http: httpx.Client, **fields: Any) -> dict[str, Any]:
    flow = http.post("/v1/flows", json={"ast_ir": {"suite": "engine-tokens"}}).json()
    fields.setdefault("seed", 11)
    resp = http.post(f"/v1/flows/{flow['flow_id']}/runs", json=fields)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _replay_run(http: httpx.Client, recorded: dict[str, Any], mode: str) -> str:
    resp = http.post(f"/v1/flows/{recorded['flow_id']}/runs",
                     json={"mode": mode, "replay_of": recorded["run_id"]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def _step(http: httpx.Client, run_id: str, body: dict[str, Any]) -> Result:
    sub, frames = http_run_step(http, run_id, body)
    assert sub.status_code == 201, sub.text
    last = frames[-1]
    assert last["event"] == "end", (body["client_token"], last["data"][:400])
    return [f["data"] for f in frames if f["event"] == "token"], json.loads(last["data"])


def _all(http: httpx.Client, run_id: str, bodies: list[dict[str, Any]],
         clients: int) -> dict[str, Result]:
    """Run every body; with ``clients`` > 1, that many at a time from as many threads."""
    if clients == 1:
        return {b["client_token"]: _step(http, run_id, b) for b in bodies}
    with ThreadPoolExecutor(clients) as pool:
        results = pool.map(lambda b: _step(http, run_id, b), bodies)
        return {b["client_token"]: r for b, r in zip(bodies, results, strict=True)}


@pytest.fixture(scope="module")
def sequential(two_slots: httpx.Client) -> dict[str, Any]:
    """Every case recorded one after the other."""
    run = _run(two_slots)
    return {"run": run, "results": _all(two_slots, run["run_id"],
                                        [_body(c) for c in CASES], 1)}


@pytest.fixture(scope="module")
def reference() -> Callable[[tuple[int, int, float]], Expected]:
    """The engine called directly in this process, memoised per case."""
    engine = Reference(default_model_path())
    memo: dict[tuple[int, int, float], Expected] = {}

    def get(case: tuple[int, int, float]) -> Expected:
        if case not in memo:
            seed, p, temp = case
            memo[case] = engine.complete(PROMPTS[p], _params(seed, temp))
        return memo[case]

    return get


def _mismatch(case: tuple[int, int, float], result: Result, exp: Expected) -> str | None:
    """Why a step differs from the engine called directly, or None."""
    tokens = [json.loads(t) for t in result[0]]
    ids = [t["id"] for t in tokens]
    data = b"".join(base64.b64decode(t["b"]) for t in tokens)
    text = "".join(t["t"] for t in tokens)
    prov, output = result[1]["provenance"], result[1]["output"]["text"]
    checks = {
        "ids": ids == exp.ids, "bytes": data == exp.data, "no -1": -1 not in ids,
        "indices": [t["i"] for t in tokens] == list(range(len(tokens))),
        "tokens_out": prov["tokens_out"] == len(tokens) == len(exp.ids),
        "text": text == output == decode_valid(data),
        # create_completion drops invalid bytes (errors="ignore"), and samples past
        # max_tokens to finish a split character.
        "completion": (exp.completion_tokens == len(tokens)
                       and data.decode("utf-8", "ignore") == exp.text) or (
            exp.completion_tokens > MAX_TOKENS == len(tokens)
            and exp.text.startswith(data.decode("utf-8", "ignore"))),
        "no U+FFFD": ("\ufffd" in text) == ("\ufffd" in decode_valid(exp.data)),
    }
    failed = [name for name, ok in checks.items() if not ok]
    return f"{case}: {failed}" if failed else None


class TestEngineTokens:
    """Every frame is an engine token, and every mode reproduces it (STREAM-2006)."""

    def test_sequential_steps_equal_the_engine_called_directly(
            self, sequential: dict[str, Any],
            reference: Callable[[tuple[int, int, float]], Expected]) -> None:
        """Ids, bytes, tokens_out and text of every case equal the engine's own."""
        results = sequential["results"]
        bad = [m for c in CASES if (m := _mismatch(c, results[_body(c)["client_token"]],
                                                   reference(c))) is not None]
        assert bad == []
        ja = [results[_body(c)["client_token"]] for c in CASES if c[1] == 0]
        assert any(json.loads(t)["t"] == "" for r in ja for t in r[0]), \
            "no Japanese character was split over tokens: the matrix tests nothing"

    def test_strict_replay_and_replay_are_byte_identical(
            self, two_slots: httpx.Client, sequential: dict[str, Any]) -> None:
        """Token frames and outputs of both replay modes equal the recording."""
        recorded = sequential["results"]
        for mode in ("strict_replay", "replay"):
            run_id = _replay_run(two_slots, sequential["run"], mode)
            again = _all(two_slots, run_id, [_body(c) for c in CASES], 1)
            diverged = [k for k, (toks, end) in again.items()
                        if toks != recorded[k][0] or end["output"] != recorded[k][1]["output"]]
            assert (mode, diverged) == (mode, [])

    def test_four_concurrent_clients_on_two_slots_reproduce_the_recording(
            self, two_slots: httpx.Client, sequential: dict[str, Any]) -> None:
        """Recorded and strict-replayed 4 at a time, every case equals its sequential
        recording: no neighbour perturbs a recording or a replay."""
        run = _run(two_slots)
        bodies = [_body(c) for c in CASES]
        recorded = _all(two_slots, run["run_id"], bodies, 4)
        strict = _all(two_slots, _replay_run(two_slots, run, "strict_replay"), bodies, 4)
        seq = sequential["results"]
        assert [k for k in seq if recorded[k][0] != seq[k][0]] == []
        assert [k for k in seq if strict[k][0] != seq[k][0]] == []


@pytest.mark.parametrize("clients", [2, 4])
def test_concurrent_clients_on_two_slots_never_diverge(two_slots: httpx.Client,
                                                       clients: int) -> None:
    """20 loops: the clients record at once, then strict-replay at once: no
    REPLAY_DIVERGED, whether they fit the 2 slots or queue for them."""
    codes: list[str] = []
    for loop in range(20):
        run = _run(two_slots, seed=loop)
        bodies = [{"type": "llm_call", "client_token": f"loop{loop}-c{c}",
                   "input": {"model": REAL_MODEL, "prompt": PROMPTS[c % len(PROMPTS)],
                             "params": {**_params(loop, 0.8), "max_tokens": 16}}}
                  for c in range(clients)]
        _all(two_slots, run["run_id"], bodies, clients)
        strict = _replay_run(two_slots, run, "strict_replay")
        with ThreadPoolExecutor(clients) as pool:
            ends = list(pool.map(lambda b, run_id=strict: http_run_step(
                two_slots, run_id, b)[1][-1], bodies))
        codes += [e["event"] if e["event"] == "end" else json.loads(e["data"])["code"]
                  for e in ends]
    assert codes == ["end"] * 20 * clients
