"""Record, replay and strict_replay (NERVE-4021, NERVE-4022, NERVE-4023, NERVE-4012)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient
from pytest_bdd import given, parsers, scenarios, then, when

from orchestrator_core.config import PoolConfig, ServerConfig
from test_harness.bdd.conftest import new_run, run_to_end
from test_harness.support import app_client, llm_step, parse_sse, table_counts
from worker_adapters.base import CompletionRequest, Delta, EngineAdapter, Finish, StreamItem
from worker_adapters.mock import MockEngine, default_handler

scenarios("replay.feature")

PROMPTS = ["first prompt", "second prompt", "third prompt"]


class Env:
    """An in-process server whose engines are counted and can be made to diverge."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.engines: list[MockEngine] = []
        self.diverge = False
        self.stack = ExitStack()
        self.client: TestClient[Any] = self.start(cfg)

    def factory(self, pc: PoolConfig, index: int) -> EngineAdapter:
        base = default_handler()

        async def handler(req: CompletionRequest) -> AsyncIterator[StreamItem]:
            if self.diverge:
                yield Delta(text="divergent", token_id=7)
                yield Finish(reason="stop")
                return
            async for item in base(req):
                yield item

        eng = MockEngine(handler)
        self.engines.append(eng)
        return eng

    def start(self, cfg: ServerConfig) -> TestClient[Any]:
        self.client = self.stack.enter_context(app_client(cfg, engine_factory=self.factory))
        return self.client

    def restart(self, cfg: ServerConfig) -> None:
        self.stack.close()
        self.stack = ExitStack()
        self.start(cfg)

    @property
    def db(self) -> pathlib.Path:
        """The server's SQLite file."""
        return pathlib.Path(self.cfg.data_dir) / "orchestrator.db"

    def requests(self) -> int:
        return sum(e.requests for e in self.engines)


@pytest.fixture
def env(mock_cfg: ServerConfig) -> Iterator[Env]:
    """The replay test environment."""
    e = Env(mock_cfg)
    yield e
    e.stack.close()


def _tokens(raw: bytes) -> list[str]:
    return [f["data"] for f in parse_sse(raw) if f["event"] == "token"]


@given("a recorded run of 3 llm_call steps on the mock engine")
def recorded(env: Env, ctx: dict[str, Any]) -> None:
    """Three recorded steps, the second at temperature 0.8 with the run-derived seed."""
    ctx["flow_run"] = new_run(env.client)
    ctx["bodies"] = [llm_step(f"c-{i}", p, temperature=0.8 if i == 1 else 0.0)
                     for i, p in enumerate(PROMPTS)]
    ran = [run_to_end(env.client, ctx["flow_run"], b) for b in ctx["bodies"]]
    ctx["recorded"] = [_tokens(raw) for _step, raw in ran]
    ctx["recorded_ids"] = [step["step_id"] for step, _raw in ran]
    ctx["flow_id"] = env.client.get(f"/v1/runs/{ctx['flow_run']}").json()["flow_id"]
    ctx["answers"] = []


def _create(env: Env, ctx: dict[str, Any], mode: str, **extra: Any) -> Any:
    resp = env.client.post(f"/v1/flows/{ctx['flow_id']}/runs",
                           json={"mode": mode, "replay_of": ctx["flow_run"], **extra})
    ctx["answers"].append(resp)
    if resp.status_code == 201:
        ctx["replay_run"] = resp.json()["run_id"]
    return resp


@when(parsers.parse("I replay the run in mode {mode}"))
def replay(env: Env, ctx: dict[str, Any], mode: str) -> None:
    """Create the replay run and run every recorded step again."""
    assert _create(env, ctx, mode).status_code == 201
    before = env.requests()
    ctx["events_before"] = table_counts(env.db)["events"]
    ctx["replayed"] = []
    ctx["replayed_raw"] = []
    ctx["replayed_steps"] = []
    for body in ctx["bodies"]:
        step, raw = run_to_end(env.client, ctx["replay_run"], body)
        ctx["replayed_steps"].append(step)
        ctx["replayed_raw"].append(raw)
        ctx["replayed"].append(_tokens(raw))
    ctx["requests"] = env.requests() - before


@then("every token stream equals the recording byte for byte")
def identical(ctx: dict[str, Any]) -> None:
    """Token frames (index, text bytes, id) are identical."""
    assert ctx["replayed"] == ctx["recorded"]
    assert all(ctx["recorded"])


@then("each replayed step was answered finished, with its recorded status")
def answered_finished(env: Env, ctx: dict[str, Any]) -> None:
    """The submission's answer already has the recording's status, usage and last_seq."""
    recorded = [env.client.get(f"/v1/steps/{i}").json() for i in ctx["recorded_ids"]]
    keys = ("status", "usage", "last_seq", "provenance")
    assert [{k: s[k] for k in keys} for s in ctx["replayed_steps"]] == [
        {k: r[k] for k in keys} for r in recorded]
    assert [s["replay_of_step"] for s in ctx["replayed_steps"]] == ctx["recorded_ids"]
    assert {s["status"] for s in ctx["replayed_steps"]} == {"succeeded"}


@then("every replayed stream equals a read-back of its recorded step byte for byte")
def equals_readback(env: Env, ctx: dict[str, Any]) -> None:
    """Ids, types and data bytes of every durable frame, terminal frame included."""
    read = [env.client.get(f"/v1/steps/{i}/stream").content for i in ctx["recorded_ids"]]
    assert ctx["replayed_raw"] == read
    assert all(b"event: end\n" in raw for raw in read)


@then("the replay added no row to the event log")
def no_rows(env: Env, ctx: dict[str, Any]) -> None:
    """Counted in the SQLite file: the replay Steps own no event row."""
    assert table_counts(env.db)["events"] == ctx["events_before"]


@then(parsers.parse("the engines received {n:d} requests during the replay"))
def engine_requests(ctx: dict[str, Any], n: int) -> None:
    """Counted at the adapter."""
    assert ctx["requests"] == n


@when(parsers.parse("I create a strict_replay run with seed {seed:d}"))
def strict_with_seed(env: Env, ctx: dict[str, Any], seed: int) -> None:
    """Ask for another seed."""
    _create(env, ctx, "strict_replay", seed=seed)


@when(parsers.parse("I create a {mode} run"))
def create_mode(env: Env, ctx: dict[str, Any], mode: str) -> None:
    """A replay-mode run of the recording."""
    assert _create(env, ctx, mode).status_code == 201


@when(parsers.parse("I submit the first step with temperature {t:f}"))
def submit_params(env: Env, ctx: dict[str, Any], t: float) -> None:
    """Changed params."""
    body = llm_step("c-0", PROMPTS[0], temperature=t)
    ctx["answers"].append(env.client.post(f"/v1/runs/{ctx['replay_run']}/steps", json=body))


@when(parsers.parse("I submit the first step with temperature {t:f} and top_p {p:f}"))
def submit_two_params(env: Env, ctx: dict[str, Any], t: float, p: float) -> None:
    """Two changed params."""
    body = llm_step("c-0", PROMPTS[0], temperature=t, top_p=p)
    ctx["answers"].append(env.client.post(f"/v1/runs/{ctx['replay_run']}/steps", json=body))


@when(parsers.parse('I submit the first step with prompt "{prompt}"'))
def submit_prompt(env: Env, ctx: dict[str, Any], prompt: str) -> None:
    """Changed prompt."""
    body = llm_step("c-0", prompt)
    ctx["answers"].append(env.client.post(f"/v1/runs/{ctx['replay_run']}/steps", json=body))


@when(parsers.parse('I submit a step with client_token "{token}"'))
def submit_token(env: Env, ctx: dict[str, Any], token: str) -> None:
    """Unknown client_token."""
    ctx["answers"].append(env.client.post(f"/v1/runs/{ctx['replay_run']}/steps",
                                          json=llm_step(token, PROMPTS[0])))


@when("I submit the first step unchanged")
def submit_same(env: Env, ctx: dict[str, Any]) -> None:
    """The recorded body."""
    ctx["answers"].append(env.client.post(f"/v1/runs/{ctx['replay_run']}/steps",
                                          json=ctx["bodies"][0]))


@when("the server restarts with a different model hash")
def restart_model(env: Env) -> None:
    """Same data dir, same model id, other weights hash."""
    pool = env.cfg.pools[0]
    model = msgspec.structs.replace(pool.models[0], sha256="f" * 64)
    cfg = msgspec.structs.replace(env.cfg, pools=[msgspec.structs.replace(pool,
                                                                          models=[model])])
    env.restart(cfg)


@when(parsers.parse('the server restarts with the pool environment {name}="{value}"'))
def restart_env(env: Env, name: str, value: str) -> None:
    """Same data dir and model; one more variable in the replicas' environment."""
    pool = msgspec.structs.replace(env.cfg.pools[0], env={name: value})
    env.restart(msgspec.structs.replace(env.cfg, pools=[pool]))


@when("the engine starts producing different tokens")
def diverge(env: Env) -> None:
    """Make every engine answer differently from the recording."""
    env.diverge = True


@then(parsers.parse("the answer is 409 {code} listing {field}"))
def refused_listing(ctx: dict[str, Any], code: str, field: str) -> None:
    """Refused before anything started, naming the field."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"]) == (409, code), resp.text
    assert field in body["data"]["fields"]
    assert {"recorded", "current"} <= set(body["data"]["fields"][field])


@then(parsers.parse("the refusal names params {names}"))
def refused_params(ctx: dict[str, Any], names: str) -> None:
    """Each differing sampling parameter, with its recorded and current value."""
    body = ctx["answers"][-1].json()
    expected = {}
    for item in names.split(", "):
        key, values = item.split(" ", 1)
        rec, cur = values.removeprefix("from ").split(" to ")
        expected[key] = {"recorded": json.loads(rec), "current": json.loads(cur)}
    assert body["data"]["fields"]["params_hash"]["params"] == expected
    assert body["message"].endswith(f"params_hash ({', '.join(expected)})")


@then(parsers.parse("the refusal names setting {name} from {rec} to {cur}"))
def refused_setting(ctx: dict[str, Any], name: str, rec: str, cur: str) -> None:
    """The engine setting behind a changed build fingerprint is named."""
    body = ctx["answers"][-1].json()
    assert body["data"]["fields"]["engine_build"]["settings"] == {
        name: {"recorded": json.loads(rec), "current": json.loads(cur)}}


@then(parsers.parse("the answer is 409 NONDETERMINISM naming field {field}"))
def nondeterminism(ctx: dict[str, Any], field: str) -> None:
    """Matched by client_token, checked by type and input hash."""
    resp = ctx["answers"][-1]
    body = resp.json()
    assert (resp.status_code, body["code"], body["data"]["field"]) == (
        409, "NONDETERMINISM", field), resp.text
    assert set(body["data"]) == {"client_token", "field", "recorded_hash", "submitted_hash"}


@then("no step was stored in the replay run")
def nothing_stored(env: Env, ctx: dict[str, Any]) -> None:
    """A refusal stores nothing."""
    run = env.client.get(f"/v1/runs/{ctx['replay_run']}").json()
    assert run["steps"] == {}


@then("the first step ends with error REPLAY_DIVERGED at index 0 with expected and actual")
def diverged(ctx: dict[str, Any]) -> None:
    """The divergence carries index, expected and actual."""
    frames = parse_sse(ctx["replayed_raw"][0])
    assert [f["event"] for f in frames if f["id"] is not None] == ["started", "error"]
    err = json.loads(frames[-1]["data"])
    first = json.loads(ctx["recorded"][0][0])
    assert err["code"] == "REPLAY_DIVERGED"
    assert err["data"]["index"] == 0
    assert err["data"]["expected"] == {"t": first["t"], "id": first["id"], "b": first["b"]}
    assert err["data"]["actual"] == {"t": "divergent", "id": 7, "b": "ZGl2ZXJnZW50"}
