"""The OpenAI facade: its pure mapping, and its routes in-process with the official SDK.

[OAI-6000] [OAI-6001] [OAI-6002] [OAI-6003] [OAI-6004] [OAI-6005] [OAI-6006]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import openai
import pytest
from litestar.testing import TestClient
from openai import OpenAI

from contracts.errors import InvalidParams
from contracts.openai import ChatCompletionRequest, CompletionRequest
from orchestrator_core.config import mock_config
from orchestrator_core.openai_map import (
    Occurrences,
    call_key,
    chat_input,
    completion_input,
    nearest_call,
    openai_field,
)
from test_harness.support import MOCK_MODEL, app_client, parse_sse, scripted_engine

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string"}}}}}
HELLO: Any = [{"role": "user", "content": "hello"}]


def chat(**body: Any) -> ChatCompletionRequest:
    """A chat request with the mock model and ``hello`` unless given."""
    return msgspec.convert({"model": MOCK_MODEL, "messages": HELLO, **body},
                           ChatCompletionRequest)


class TestMapping:
    """Request -> llm_call input (OAI-6002, OAI-6003)."""

    def test_messages_and_params_map_onto_the_step_input(self) -> None:
        """[OAI-6002] Roles, text parts, tool calls and tool results map one to one; the
        sampling params go into ``params``."""
        req = chat(messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            temperature=0.5, top_p=0.9, max_completion_tokens=7, seed=3, stop="\n")
        assert msgspec.to_builtins(chat_input(req)) == {
            "model": MOCK_MODEL,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "ab"},
                         {"role": "assistant", "content":
                          '{"intents":[{"args":{"city":"Paris"},"tool":"get_weather"}]}'},
                         {"role": "user", "content": "Tool result (c1): sunny"}],
            "params": {"temperature": 0.5, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
                       "repeat_penalty": 1.0, "max_tokens": 7, "seed": 3, "stop": ["\n"]}}

    def test_response_format_becomes_the_response_contract(self) -> None:
        """[OAI-6002] A json_schema response_format is the Step's response_contract."""
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        req = chat(response_format={"type": "json_schema",
                                    "json_schema": {"name": "x", "schema": schema}})
        assert chat_input(req).response_contract == schema
        assert chat_input(chat(response_format={"type": "json_object"})).response_contract \
            == {"type": "object"}

    def test_tools_prepend_the_menu_and_constrain_the_output(self) -> None:
        """[OAI-6003] ``tool_choice: required`` constrains the output to the intents
        envelope of the request's tools, shown first as a system message."""
        inp = chat_input(chat(tools=[WEATHER], tool_choice="required",
                              parallel_tool_calls=False))
        assert inp.messages is not None and inp.messages[0].role == "system"
        assert inp.messages[0].content.startswith("You can call the tools listed below.")
        assert inp.response_contract == {
            "type": "object", "additionalProperties": False, "required": ["intents"],
            "properties": {"intents": {"type": "array", "minItems": 1, "maxItems": 1,
                                       "items": {"anyOf": [{
                                           "type": "object", "additionalProperties": False,
                                           "required": ["tool", "args"],
                                           "properties": {
                                               "tool": {"const": "get_weather"},
                                               "args": WEATHER["function"]["parameters"]}}]}}}}

    @pytest.mark.parametrize(("body", "param"), [
        ({"n": 2}, "n"), ({"logit_bias": {"5": 1.0}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"), ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"), ({"audio": {"voice": "x"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "u"}}]}]},
         "messages[0].content[0].type"),
    ])
    def test_unhonoured_parameters_are_refused_by_name(self, body: dict[str, Any],
                                                       param: str) -> None:
        """[OAI-6002] A parameter the engine cannot honour is INVALID_PARAMS naming it."""
        with pytest.raises(InvalidParams) as caught:
            chat_input(chat(**body))
        assert caught.value.data == {"field": param}

    def test_a_completion_defaults_to_sixteen_tokens_and_refuses_echo(self) -> None:
        """[OAI-6002] A text completion maps its prompt, 16 tokens by default; echo is
        refused."""
        req = msgspec.convert({"model": MOCK_MODEL, "prompt": "once"}, CompletionRequest)
        assert (completion_input(req).prompt, completion_input(req).params.max_tokens) == \
            ("once", 16)
        with pytest.raises(InvalidParams) as caught:
            completion_input(msgspec.convert({"model": MOCK_MODEL, "prompt": "x",
                                              "echo": True}, CompletionRequest))
        assert caught.value.data == {"field": "echo"}


class TestIdentity:
    """Call keys, occurrences and the nearest recorded call (OAI-6004)."""

    def test_the_key_ignores_streaming_and_changes_with_the_request(self) -> None:
        """[OAI-6004] A streamed and a plain call have one key; another prompt another."""
        assert call_key(chat(stream=True, stream_options={"include_usage": True})) == \
            call_key(chat())
        assert call_key(chat(temperature=0.1)) != call_key(chat())

    def test_occurrences_count_per_run_and_resume_from_the_store(self) -> None:
        """[OAI-6004] Claims count 0, 1, ... per Run and key; a fresh counter starts
        after the tokens already stored."""
        occ = Occurrences()
        assert [occ.claim("r", "b3:ab", lambda t: False) for _ in range(2)] == \
            ["oai:ab:0", "oai:ab:1"]
        assert occ.claim("r2", "b3:ab", lambda t: False) == "oai:ab:0"
        stored = {"oai:ab:0", "oai:ab:1", "oai:ab:2"}
        assert Occurrences().claim("r", "b3:ab", stored.__contains__) == "oai:ab:3"

    def test_the_nearest_call_and_its_first_difference_use_request_names(self) -> None:
        """[OAI-6004] The recorded call with the most equal fields is named with the
        first differing field, shifted past a tool menu."""
        recorded = [("stp_a", msgspec.to_builtins(chat_input(chat(messages=[
                        {"role": "user", "content": "other"}, {"role": "user", "content": "x"}])))),
                    ("stp_b", msgspec.to_builtins(chat_input(chat(messages=[
                        {"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]))))]
        mine = chat(messages=[{"role": "system", "content": "s"},
                              {"role": "user", "content": "ho"}])
        assert nearest_call(recorded, msgspec.to_builtins(chat_input(mine))) == \
            ("stp_b", ".messages[1].content")
        tools = chat(tools=[WEATHER])
        assert (openai_field(".messages[2].content", tools),
                openai_field(".messages[0].content", tools),
                openai_field(".params.temperature", mine),
                openai_field(".params.max_tokens", chat(max_completion_tokens=3)),
                openai_field(".response_contract.type", mine)) == \
            ("messages[1].content", "tools", "temperature", "max_completion_tokens",
             "response_format.json_schema.schema")


@pytest.fixture
def server() -> Iterator[TestClient[Any]]:
    """An in-process server with two tenants, ``ta`` and ``tb``."""
    with app_client(mock_config(auth_tokens={"ka": "ta", "kb": "tb"})) as c:
        yield c


def new_run(c: TestClient[Any], key: str = "ka", **body: Any) -> str:
    """A record Run of a new Flow, as the tenant of ``key``."""
    auth = {"Authorization": f"Bearer {key}"}
    flow = c.post("/v1/flows", json={"ast_ir": {"t": 1}}, headers=auth).json()
    resp = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 5, **body}, headers=auth)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


def sdk(c: TestClient[Any], run_id: str, key: str = "ka") -> OpenAI:
    """The official SDK on the in-process server (no retries)."""
    return OpenAI(base_url=f"http://127.0.0.1/v1/runs/{run_id}/openai/v1", api_key=key,
                  http_client=c, max_retries=0)  # type: ignore[arg-type]  # an httpx.Client


class TestRoutes:
    """The facade's routes through the SDK (OAI-6000, OAI-6001, OAI-6003)."""

    def test_a_chat_call_is_an_llm_call_step_of_the_run(self, server: TestClient[Any]) -> None:
        """[OAI-6001] The answer is the Step's text and usage; the Step (X-Step-Id) is
        an llm_call of the Run with the facade's client_token."""
        run_id = new_run(server)
        raw = sdk(server, run_id).chat.completions.with_raw_response.create(
            model=MOCK_MODEL, messages=HELLO, max_tokens=5)
        answer = raw.parse()
        step = server.get(f"/v1/steps/{raw.headers['x-step-id']}",
                          headers={"Authorization": "Bearer ka"}).json()
        assert (step["type"], step["run_id"], step["status"]) == \
            ("llm_call", run_id, "succeeded")
        assert step["client_token"] == "oai:" + call_key(chat(max_tokens=5))[3:] + ":0"
        frames = parse_sse(server.get(f"/v1/steps/{step['step_id']}/stream",
                                      headers={"Authorization": "Bearer ka"}).content)
        end = msgspec.json.decode(frames[-1]["data"])
        assert answer.choices[0].message.content == end["output"]["text"]
        assert answer.usage is not None and (answer.usage.prompt_tokens,
                                             answer.usage.completion_tokens) == \
            (end["provenance"]["tokens_in"], 5)
        assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"

    def test_a_stream_ends_with_usage_and_done(self, server: TestClient[Any]) -> None:
        """[OAI-6001] A streamed call sends role, text, finish and usage chunks, then
        ``[DONE]``; the text is the plain call's."""
        client = sdk(server, new_run(server))
        chunks = list(client.chat.completions.create(
            model=MOCK_MODEL, messages=HELLO, max_tokens=4, stream=True,
            stream_options={"include_usage": True}))
        plain = client.chat.completions.create(model=MOCK_MODEL, messages=HELLO, max_tokens=4)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 4

    def test_tools_come_back_as_tool_calls(self, server: TestClient[Any]) -> None:
        """[OAI-6003] With ``tool_choice: required`` the answer is tool_calls of the
        request's tool with JSON arguments, finish_reason ``tool_calls``."""
        answer = sdk(server, new_run(server)).chat.completions.create(
            model=MOCK_MODEL, messages=HELLO, tools=[WEATHER], tool_choice="required")
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls or []
        assert calls and {c.function.name for c in calls} == {"get_weather"}  # type: ignore[union-attr]
        assert all(set(msgspec.json.decode(c.function.arguments)) == {"city"}  # type: ignore[union-attr]
                   for c in calls)

    def test_models_lists_the_served_models(self, server: TestClient[Any]) -> None:
        """[OAI-6000] ``GET /models`` lists the pools' model ids."""
        models = sdk(server, new_run(server)).models.list()
        assert [(m.id, m.owned_by, m.object) for m in models.data] == \
            [(MOCK_MODEL, "mock-0", "model")]


class TestErrors:
    """Errors in OpenAI's shape, on the facade only (OAI-6005, OAI-6006)."""

    def test_a_wrong_key_is_authentication_error(self, server: TestClient[Any]) -> None:
        """[OAI-6005] A wrong bearer token is the SDK's AuthenticationError (401)."""
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk(server, new_run(server), key="nope").models.list()
        assert caught.value.body == {"message": "a valid bearer token is required",
                                     "type": "authentication_error", "code": "UNAUTHORIZED",
                                     "param": None}

    def test_another_tenants_run_answers_like_an_unknown_one(self,
                                                             server: TestClient[Any]) -> None:
        """[OAI-6000] Tenant B calling tenant A's Run gets the 404 of an unknown Run."""
        theirs = new_run(server, "ka")
        bodies = []
        for run_id in (theirs, "run_000000000000000000000000"):
            with pytest.raises(openai.NotFoundError) as caught:
                sdk(server, run_id, key="kb").chat.completions.create(model=MOCK_MODEL,
                                                                      messages=HELLO)
            assert isinstance(caught.value.body, dict)
            bodies.append({**caught.value.body, "message": caught.value.body[
                "message"].replace(run_id, "<id>")})
        assert bodies[0] == bodies[1] == {"message": "no run <id>",
                                          "type": "invalid_request_error",
                                          "code": "NOT_FOUND", "param": None}

    def test_another_tenants_calls_do_not_shift_the_occurrences(
            self, server: TestClient[Any]) -> None:
        """[OAI-6004] Tenant B's refused call on tenant A's Run claims no occurrence: A's
        next identical call is still occurrence 0."""
        run_id = new_run(server, "ka")
        with pytest.raises(openai.NotFoundError):
            sdk(server, run_id, key="kb").chat.completions.create(model=MOCK_MODEL,
                                                                  messages=HELLO)
        raw = sdk(server, run_id).chat.completions.with_raw_response.create(
            model=MOCK_MODEL, messages=HELLO)
        step = server.get(f"/v1/steps/{raw.headers['x-step-id']}",
                          headers={"Authorization": "Bearer ka"}).json()
        assert step["client_token"].endswith(":0")

    def test_an_unknown_model_names_the_model(self, server: TestClient[Any]) -> None:
        """[OAI-6005] An unknown model is BadRequestError with param ``model``."""
        with pytest.raises(openai.BadRequestError) as caught:
            sdk(server, new_run(server)).chat.completions.create(model="nope",
                                                                 messages=HELLO)
        assert isinstance(caught.value.body, dict)
        assert (caught.value.body["code"], caught.value.body["param"]) == \
            ("INVALID_MODEL", "model")

    def test_a_budget_is_insufficient_quota_without_retry(self,
                                                          server: TestClient[Any]) -> None:
        """[OAI-6005] An exhausted Run budget is 429 insufficient_quota, not retried."""
        run_id = new_run(server, budgets={"max_tokens_out": 1})
        resp = server.post(f"/v1/runs/{run_id}/openai/v1/chat/completions",
                           json={"model": MOCK_MODEL, "messages": HELLO, "max_tokens": 8},
                           headers={"Authorization": "Bearer ka"})
        assert (resp.status_code, resp.headers["x-should-retry"]) == (429, "false")
        assert msgspec.json.decode(resp.content)["error"]["type"] == "insufficient_quota"

    @pytest.mark.parametrize(("content", "param"), [
        (b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}', "body"),
        (b'{"model": "m", "messages": ' + b"[" * 200 + b"]" * 200 + b"}", "body"),
        (b'{"model": "m", "messages": [], "max_tokens": 100000000000000000000000}', "body"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
         b'"temperature": 1e400}', "body"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
         b'"max_tokens": 9000000000000}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "wat": 1}', "wat"),
    ])
    def test_hostile_bodies_are_typed_400s(self, server: TestClient[Any], content: bytes,
                                           param: str) -> None:
        """[OAI-6006] Invalid UTF-8, deep nesting, huge numbers and unknown fields are
        400 invalid_request_error in OpenAI's shape naming the field."""
        resp = server.post(f"/v1/runs/{new_run(server)}/openai/v1/chat/completions",
                           content=content, headers={"Authorization": "Bearer ka",
                                                     "Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
        err = msgspec.json.decode(resp.content)["error"]
        assert (err["type"], err["code"], err["param"]) == \
            ("invalid_request_error", "INVALID_PARAMS", param)

    def test_a_failed_step_is_422_or_an_error_chunk(self) -> None:
        """[OAI-6005] Output that misses the response_format is UnprocessableEntityError
        (422 CONTRACT_VIOLATION); in a stream, an error chunk the SDK raises."""
        fmt: Any = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}}}
        with app_client(mock_config(), engine_factory=lambda pc, i: scripted_engine(
                "not json")) as c:
            flow = c.post("/v1/flows", json={"ast_ir": {"t": 2}}).json()
            run_id = c.post(f"/v1/flows/{flow['flow_id']}/runs", json={"seed": 1}).json()[
                "run_id"]
            client = sdk(c, run_id)
            with pytest.raises(openai.UnprocessableEntityError) as caught:
                client.chat.completions.create(model=MOCK_MODEL, messages=HELLO,
                                               response_format=fmt)
            assert isinstance(caught.value.body, dict)
            assert (caught.value.body["code"], caught.value.body["type"]) == \
                ("CONTRACT_VIOLATION", "invalid_request_error")
            with pytest.raises(openai.APIError) as streamed:
                list(client.chat.completions.create(model=MOCK_MODEL, messages=HELLO,
                                                    response_format=fmt, stream=True))
            assert streamed.value.message == \
                "the model's output is not a complete JSON document"

    def test_native_routes_keep_the_flat_envelope(self, server: TestClient[Any]) -> None:
        """[OAI-6005] A native route's error is still ``{code, message, retriable}``."""
        resp = server.post(f"/v1/runs/{new_run(server)}/steps", json={"wat": 1},
                           headers={"Authorization": "Bearer ka"})
        assert resp.status_code == 400 and set(resp.json()) >= {"code", "message",
                                                                 "retriable"}
