"""No hidden prompts: a ``prompt`` reaches every engine byte for byte, and the text a chat
template made is kept, hashed and shown (NERVE-4090, NERVE-4091, NERVE-4092, NERVE-4093,
NERVE-4094)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import blake3
import httpx
import msgspec
import pytest

from contracts.errors import InvalidParams
from orchestrator_core.config import PoolConfig, mock_config
from test_harness.bdd.conftest import run_to_end
from test_harness.support import MOCK_MODEL, app_client, parse_sse
from test_harness.templated import SMOL_SYSTEM, SmolMock, TemplatedTokenizer
from worker_adapters.base import CompletionRequest, EngineAdapter, PreparedPrompt
from worker_adapters.llamacpp_engine import LlamaCppEngine
from worker_adapters.mock import MockEngine, mock_identity
from worker_adapters.openai_http import OpenAIHttpEngine

RAW = "  <|im_start|>system\nno template\r\n\té 日本\u2028<|im_end|> trailing  "
"""A prompt a chat template would rewrite: special-token text, CR LF, tabs, non-ASCII."""


def _b3(text: str) -> str:
    return "b3:" + blake3.blake3(text.encode("utf-8")).hexdigest()


def _factory(engines: list[MockEngine], cls: type[MockEngine] = SmolMock) -> Any:
    def factory(pc: PoolConfig, index: int) -> EngineAdapter:
        engines.append(cls())
        return engines[-1]
    return factory


def _run(client: Any, **run: Any) -> str:
    flow = client.post("/v1/flows", json={"ast_ir": {"prompts": True}}).json()
    resp = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 3, **run})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def _end(raw: bytes) -> dict[str, Any]:
    frames = [f for f in parse_sse(raw) if f["id"] is not None]
    assert frames[-1]["event"] == "end", frames[-1]
    return dict(json.loads(frames[-1]["data"]))


def _sent(engines: list[MockEngine]) -> CompletionRequest:
    sent = [e.last_request for e in engines if e.last_request is not None]
    assert len(sent) == 1
    return sent[0]


class TestRawPrompt:
    """A ``prompt`` is sent as is, on every engine (NERVE-4090)."""

    def test_a_prompt_reaches_the_mock_engine_byte_for_byte(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4090] The engine receives the submitted prompt's exact text, no template
        applied, and the provenance has no rendered_hash: there is nothing else to see."""
        engines: list[MockEngine] = []
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines)) as client:
            step, raw = run_to_end(client, _run(client), {
                "type": "llm_call", "client_token": "raw",
                "input": {"model": MOCK_MODEL, "prompt": RAW}})
            shown = client.get(f"/v1/steps/{step['step_id']}/prompt")
        assert _sent(engines).prompt.encode("utf-8") == RAW.encode("utf-8")
        prov = _end(raw)["provenance"]
        assert {"rendered_hash", "template", "fallback"} & set(prov) == set()
        assert shown.status_code == 200
        assert shown.json() == {"step_id": step["step_id"], "rendered": RAW, "hash": _b3(RAW),
                                "template": None}

    def test_the_llamacpp_adapter_sends_a_prompt_raw(self) -> None:
        """[NERVE-4090] The llama.cpp worker adapter prepares a prompt as itself (no
        template) and posts exactly that text to the worker."""
        bodies: list[dict[str, Any]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            bodies.append(json.loads(request.content))
            return httpx.Response(200, content=b'{"finish_reason":"stop"}\n')

        engine = LlamaCppEngine("http://worker", mock_identity(), TemplatedTokenizer(),
                                transport=httpx.MockTransport(handler))
        prepared = engine.prepare(prompt=RAW, messages=None)
        assert prepared == PreparedPrompt(text=RAW, tokens_in=len(RAW.split()), template=None)
        _drain(engine, prepared.text)
        assert bodies[0]["prompt"] == RAW

    @pytest.mark.parametrize("remote", [False, True], ids=["model-file-here", "server-side"])
    def test_the_openai_http_adapter_sends_a_prompt_raw_to_completions(
            self, remote: bool) -> None:
        """[NERVE-4090] The OpenAI-compatible adapter prepares a prompt as itself, with its
        own tokenizer or its server's, and posts it to /completions (never /chat)."""
        seen: list[tuple[str, dict[str, Any]]] = []

        def handler(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            seen.append((request.url.path, body))
            if request.url.path == "/tokenize":
                return httpx.Response(200, json={"tokens": [1, 2, 3]})
            return httpx.Response(200, content=b'data: {"choices": [{"text": "",'
                                  b' "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n')

        engine = OpenAIHttpEngine("http://engine", mock_identity(),
                                  None if remote else TemplatedTokenizer(),
                                  transport=httpx.MockTransport(handler),
                                  dialect="llama-server")
        prepared = _aprepare(engine, RAW)
        assert (prepared.text, prepared.template) == (RAW, None)
        _drain(engine, prepared.text)
        paths = [p for p, _b in seen]
        assert paths[-1] == "/v1/completions" and "/apply-template" not in paths
        assert seen[-1][1]["prompt"] == RAW


def _aprepare(engine: EngineAdapter, prompt: str | None,
              messages: list[dict[str, str]] | None = None) -> PreparedPrompt:
    import anyio

    async def go() -> PreparedPrompt:
        return await engine.aprepare(prompt=prompt, messages=messages)

    return anyio.run(go)


def _drain(engine: EngineAdapter, text: str) -> None:
    import anyio

    req = CompletionRequest(prompt=text, seed=1, temperature=0.0, top_k=40, top_p=0.95,
                            min_p=0.05, repeat_penalty=1.0, max_tokens=4)

    async def go() -> None:
        async for _item in engine.stream(req):
            pass
        await engine.aclose()

    anyio.run(go)


class TestRenderedMessages:
    """The text a chat template made is kept, hashed and shown (NERVE-4091, NERVE-4092)."""

    def test_the_template_text_of_a_messages_step_is_retrievable_and_hashed(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4091] [NERVE-4092] A messages step with no system turn: the engine saw the
        template's own system turn; GET /prompt shows that exact text, and its b3 hash is
        the terminal frame's provenance.rendered_hash."""
        engines: list[MockEngine] = []
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines)) as client:
            step, raw = run_to_end(client, _run(client), {
                "type": "llm_call", "client_token": "chat",
                "input": {"model": MOCK_MODEL,
                          "messages": [{"role": "user", "content": "Hi é"}]}})
            shown = client.get(f"/v1/steps/{step['step_id']}/prompt")
            view = client.get(f"/v1/steps/{step['step_id']}").json()
        expected = ("<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n"
                    "<|im_start|>user\nHi é<|im_end|>\n<|im_start|>assistant\n")
        assert _sent(engines).prompt == expected
        prov = _end(raw)["provenance"]
        assert (prov["rendered_hash"], prov["template"]) == (_b3(expected), "mock")
        assert view["provenance"]["rendered_hash"] == _b3(expected)
        assert shown.json() == {"step_id": step["step_id"], "rendered": expected,
                                "hash": _b3(expected), "template": "mock"}

    def test_a_plans_menu_is_part_of_the_text_shown(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4095] The default menu "system" message is server-authored text the
        engine sees: GET /prompt shows it, and the prompt step has a rendered_hash."""
        engines: list[MockEngine] = []
        tool = {"name": "count", "description": "Count words.",
                "parameters": {"type": "object", "properties": {"t": {"type": "string"}}}}
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines)) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {"m": 1}, "tools": [tool]}).json()
            run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()
            step, raw = run_to_end(client, run["run_id"], {
                "type": "llm_plan", "client_token": "p",
                "input": {"model": MOCK_MODEL, "prompt": "count these"}})
            shown = client.get(f"/v1/steps/{step['step_id']}/prompt").json()
        sent = _sent(engines).prompt
        assert sent.startswith("You can call the tools listed below.")
        assert sent.endswith("\n\ncount these")
        assert shown["rendered"] == sent and shown["template"] is None
        assert _end(raw)["provenance"]["rendered_hash"] == shown["hash"] == _b3(sent)

    def test_a_redacted_prompt_shows_the_redacted_text(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4091] [NERVE-4092] A prompt the Run's policy redacts is not what the
        engine saw: the redacted text is kept and hashed, and GET /prompt shows it."""
        engines: list[MockEngine] = []
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines)) as client:
            run = _run(client, policy={"redact": ["sk-[a-z0-9]+"]})
            step, raw = run_to_end(client, run, {
                "type": "llm_call", "client_token": "r",
                "input": {"model": MOCK_MODEL, "prompt": "key sk-abc123 here"}})
            shown = client.get(f"/v1/steps/{step['step_id']}/prompt").json()
        sent = "key [REDACTED] here"
        assert _sent(engines).prompt == sent
        assert _end(raw)["provenance"]["rendered_hash"] == _b3(sent)
        assert shown == {"step_id": step["step_id"], "rendered": sent, "hash": _b3(sent),
                         "template": None}

    def test_a_replayed_step_shows_the_recorded_text(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4092] A replay step, served from the recording with no engine request,
        shows the text its recording's engine was sent."""
        engines: list[MockEngine] = []
        body = {"type": "llm_call", "client_token": "chat",
                "input": {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "Hi"}]}}
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines)) as client:
            recorded = _run(client)
            first, _raw = run_to_end(client, recorded, body)
            replay = _run(client, mode="replay", replay_of=recorded)
            again, _raw = run_to_end(client, replay, body)
            was = client.get(f"/v1/steps/{first['step_id']}/prompt").json()
            shown = client.get(f"/v1/steps/{again['step_id']}/prompt").json()
        assert sum(e.requests for e in engines) == 1
        assert shown == {**was, "step_id": again["step_id"]}
        assert shown["rendered"].startswith("<|im_start|>system\n" + SMOL_SYSTEM)

    def test_the_prompt_of_another_tenants_step_answers_like_an_unknown_one(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4092] Another tenant's step id gets the 404 an unknown id gets, but for
        the id; a step that is not an LLM step has no prompt."""
        cfg = mock_config(data_dir=str(tmp_path), auth_tokens={"ta": "alpha", "tb": "beta"})
        a, b = {"Authorization": "Bearer ta"}, {"Authorization": "Bearer tb"}
        with app_client(cfg, engine_factory=_factory([])) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {"t": 1}}, headers=a).json()
            run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}, headers=a).json()
            step = client.post(f"/v1/runs/{run['run_id']}/steps", headers=a, json={
                "type": "llm_call", "client_token": "c",
                "input": {"model": MOCK_MODEL, "prompt": "x"}}).json()
            ckp = client.post(f"/v1/runs/{run['run_id']}/steps", headers=a, json={
                "type": "checkpoint", "client_token": "k",
                "input": {"snapshot": {"pc": 1}}}).json()
            theirs = client.get(f"/v1/steps/{step['step_id']}/prompt", headers=b)
            unknown = client.get("/v1/steps/stp_unknown/prompt", headers=b)
            mine = client.get(f"/v1/steps/{step['step_id']}/prompt", headers=a)
            other = client.get(f"/v1/steps/{ckp['step_id']}/prompt", headers=a)
        assert (theirs.status_code, unknown.status_code, mine.status_code) == (404, 404, 200)
        assert theirs.json() == {"code": "NOT_FOUND", "message": f"no step {step['step_id']}",
                                 "retriable": False, "data": {"step_id": step["step_id"]}}
        assert unknown.json() == {"code": "NOT_FOUND", "message": "no step stp_unknown",
                                  "retriable": False, "data": {"step_id": "stp_unknown"}}
        assert other.status_code == 404
        assert other.json()["data"] == {"step_id": ckp["step_id"], "type": "checkpoint"}

    def test_a_rendered_text_over_the_recorded_value_bound_is_refused(self) -> None:
        """[NERVE-4091] A rendered text longer than max_recorded_value_bytes is refused
        with INVALID_PARAMS naming the input field, before it is kept."""
        from orchestrator_core.prompts import rendered_of

        prepared = PreparedPrompt(text="é" * 40, tokens_in=1, template="mock")
        with pytest.raises(InvalidParams) as info:
            rendered_of(prepared, None, limit_bytes=64)
        assert info.value.data == {"field": "input.messages", "reason": "size",
                                   "limit_bytes": 64}
        assert rendered_of(prepared, None, limit_bytes=80) == (_b3("é" * 40), "mock")
        assert rendered_of(PreparedPrompt(text="p", tokens_in=1), "p", limit_bytes=0) == \
            (None, None)


class TestStrictReplayOfTheTemplate:
    """A changed chat template is a changed determinism input (NERVE-4093)."""

    def test_a_changed_template_refuses_strict_replay(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4093] The same messages rendered by another template differ in
        rendered_hash: strict_replay is refused with DETERMINISM_INPUTS_DIFFER naming it,
        before the engine is asked for anything."""
        engines: list[MockEngine] = []
        body = {"type": "llm_call", "client_token": "chat",
                "input": {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "Hi"}]}}
        with app_client(mock_config(data_dir=str(tmp_path), replicas=1),
                        engine_factory=_factory(engines)) as client:
            recorded = _run(client)
            _step, raw = run_to_end(client, recorded, body)
            was = _end(raw)["provenance"]["rendered_hash"]
            same = _run(client, mode="strict_replay", replay_of=recorded)
            _step, again = run_to_end(client, same, body)
            assert _end(again)["provenance"]["rendered_hash"] == was
            requests = engines[0].requests
            smol = engines[0]
            assert isinstance(smol, SmolMock)
            smol.template = _OtherTemplate()
            changed = _run(client, mode="strict_replay", replay_of=recorded)
            refused = client.post(f"/v1/runs/{changed}/steps", json=body)
        assert refused.status_code == 409, refused.text
        err = refused.json()
        assert err["code"] == "DETERMINISM_INPUTS_DIFFER"
        now = _b3(_OtherTemplate().render([{"role": "user", "content": "Hi"}]))
        assert err["data"]["fields"] == {"rendered_hash": {"recorded": was, "current": now}}
        assert engines[0].requests == requests


class _OtherTemplate(TemplatedTokenizer):
    """A template revision: another default system turn."""

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        return "<|system|>be brief\n" + super().render(messages)


class _NoConstraintMock(MockEngine):
    """An engine with no constrained decoding (an OpenAI pool without ``constraint``)."""

    constrained_decoding = None


class _GbnfMock(MockEngine):
    """The mock engine refusing schemas as the llama.cpp grammar compiler does."""

    def check_constraint(self, schema: dict[str, Any]) -> None:
        from worker_adapters.openai_http import constraint_fields

        constraint_fields("gbnf", schema)


GREP = {"name": "grep", "parameters": {"type": "object", "required": ["q"],
                                       "properties": {"q": {"type": "string",
                                                            "pattern": "[a-z]+"}}}}
"""A tool schema the GBNF converter cannot express (an unanchored pattern)."""


class TestPlanFallback:
    """A plan's looser constraint is refused unless the caller opts in (NERVE-4094)."""

    def _plan(self, tmp_path: pathlib.Path, cls: type[MockEngine],
              **extra: Any) -> tuple[Any, bytes | None, list[MockEngine]]:
        engines: list[MockEngine] = []
        with app_client(mock_config(data_dir=str(tmp_path)),
                        engine_factory=_factory(engines, cls)) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {"t": 1}, "tools": [GREP]}).json()
            run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()
            body = {"type": "llm_plan", "client_token": "p", "input": {
                "model": MOCK_MODEL, "prompt": "find words", "params": {"max_tokens": 200},
                **extra}}
            resp = client.post(f"/v1/runs/{run['run_id']}/steps", json=body)
            raw = None
            if resp.status_code == 201:
                with client.stream("GET", f"/v1/steps/{resp.json()['step_id']}/stream") as s:
                    raw = b"".join(s.iter_bytes())
        return resp, raw, engines

    @pytest.mark.parametrize(("cls", "field", "fallback"), [
        (_GbnfMock, "input.tools", "envelope"),
        (_NoConstraintMock, "input.model", "unconstrained")])
    def test_a_looser_constraint_is_refused_by_default(
            self, tmp_path: pathlib.Path, cls: type[MockEngine], field: str,
            fallback: str) -> None:
        """[NERVE-4094] With no fallback opted in, a plan the engine cannot constrain to
        its strict intents schema is a 400 naming the field and the fallback refused; the
        engine is never asked."""
        resp, _raw, engines = self._plan(tmp_path, cls)
        assert resp.status_code == 400, resp.text
        err = resp.json()
        assert err["code"] == "INVALID_PARAMS"
        assert (err["data"]["field"], err["data"]["fallback"]) == (field, fallback)
        assert sum(e.requests for e in engines) == 0

    @pytest.mark.parametrize(("cls", "fallback"), [
        (_GbnfMock, "envelope"), (_NoConstraintMock, "unconstrained")])
    def test_an_allowed_fallback_is_reported_in_the_terminal_frame(
            self, tmp_path: pathlib.Path, cls: type[MockEngine], fallback: str) -> None:
        """[NERVE-4094] ``fallback: "allow"`` runs the plan under the looser constraint,
        and the end frame's provenance names it."""
        resp, raw, _engines = self._plan(tmp_path, cls, fallback="allow")
        assert resp.status_code == 201, resp.text
        assert raw is not None
        assert _end(raw)["provenance"]["fallback"] == fallback

    def test_a_plan_the_engine_constrains_reports_no_fallback(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4094] A plan under its strict intents schema has no fallback field, and
        its input hash is that of an input without the field (omitted default)."""
        resp, raw, _engines = self._plan(tmp_path, MockEngine, fallback="refuse")
        assert resp.status_code == 201 and raw is not None
        assert "fallback" not in _end(raw)["provenance"]
        assert "fallback" not in msgspec.json.decode(msgspec.json.encode(resp.json()["input"]))

    @pytest.mark.sqlite_only  # rewrites the SQLite file (PG-9053)
    def test_a_recording_made_under_a_silent_fallback_still_strict_replays(
            self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4094] A plan recorded before the fallback was refused (no ``fallback``
        in its input, the loose envelope in its params_hash) strict-replays unchanged:
        the recording allows the fallback it was made under, and the replay reports it."""
        engines: list[MockEngine] = []
        with app_client(mock_config(data_dir=str(tmp_path), replicas=1),
                        engine_factory=_factory(engines, _GbnfMock)) as client:
            flow = client.post("/v1/flows", json={"ast_ir": {"t": 1}, "tools": [GREP]}).json()
            run = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={}).json()
            inp = {"model": MOCK_MODEL, "prompt": "find words", "params": {"max_tokens": 200}}
            step, _raw = run_to_end(client, run["run_id"], {
                "type": "llm_plan", "client_token": "p", "input": {**inp, "fallback": "allow"}})
            _as_if_recorded_without_fallback(tmp_path / "orchestrator.db", step["step_id"])
            replay = client.post(f"/v1/flows/{flow['flow_id']}/runs", json={
                "mode": "strict_replay", "replay_of": run["run_id"]}).json()
            _step, raw = run_to_end(client, replay["run_id"], {
                "type": "llm_plan", "client_token": "p", "input": inp})
        assert _end(raw)["provenance"]["fallback"] == "envelope"


def _as_if_recorded_without_fallback(db: pathlib.Path, step_id: str) -> None:
    """Rewrite a recorded plan's stored input and input hash without ``fallback``, as a
    server before NERVE-4094 stored it."""
    import sqlite3

    from orchestrator_core.canonical import b3, canonical_json

    con = sqlite3.connect(db)
    (stored,) = con.execute("SELECT input FROM steps WHERE step_id = ?", (step_id,)).fetchone()
    inp = json.loads(stored)
    del inp["fallback"]
    con.execute("UPDATE steps SET input = ?, input_hash = ? WHERE step_id = ?",
                (canonical_json(inp).decode(), b3({"type": "llm_plan", "input": inp}), step_id))
    con.commit()
    con.close()


@pytest.mark.engine
def test_the_llamacpp_worker_evaluates_exactly_the_prompts_tokens() -> None:
    """[NERVE-4090] On SmolLM2, the tokens the worker evaluates for a raw prompt spell the
    prompt's bytes exactly (no template, no system turn) and are as many as tokens_in
    counts, while the model's template adds its own system turn to chat messages."""
    from worker_adapters.llamacpp import GgufTokenizer, default_model_path, llamacpp_settings
    from worker_adapters.llamacpp_worker import _Slot
    from worker_adapters.openai_http import constraint_fields

    # Imports llama_cpp as the server does, which closes its /dev/null handles at exit.
    constraint_fields("gbnf", {"type": "string"})
    path = default_model_path()
    tokenizer = GgufTokenizer(path)
    slot = _Slot(str(path), llamacpp_settings({}, 2048))
    tokens = slot.prompt_tokens(RAW)
    assert slot.llm.detokenize(tokens, special=True) == RAW.encode("utf-8")
    assert len(tokens) == tokenizer.count(RAW)
    assert tokenizer.render([{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
