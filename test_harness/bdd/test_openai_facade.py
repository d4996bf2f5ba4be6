"""The OpenAI facade through the official SDK, in-process on the mock engine
(OAI-6000..OAI-6007)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import openai
import pytest
from litestar.testing import TestClient
from openai import OpenAI
from pytest_bdd import given, parsers, scenarios, then, when

from test_harness.bdd.conftest import new_run
from test_harness.support import MOCK_MODEL

scenarios("openai_facade.feature")

SYSTEM = {"role": "system", "content": "You answer in one line."}
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["city"],
        "properties": {"city": {"type": "string"}}}}}


def sdk(client: TestClient[Any], run_id: str) -> OpenAI:
    """The official SDK on the in-process server, without retries."""
    return OpenAI(base_url=f"http://127.0.0.1/v1/runs/{run_id}/openai/v1", api_key="none",
                  http_client=client, max_retries=0)  # type: ignore[arg-type]  # an httpx.Client


def engine_requests(client: TestClient[Any]) -> int:
    """The server's ``orchestrator_engine_requests_total``, summed over pools."""
    text = client.get("/metrics").text
    return sum(int(float(v)) for v in re.findall(
        r"^orchestrator_engine_requests_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def ask(oai: OpenAI, *questions: str) -> list[bytes]:
    """An agent asking its questions one after the other, each with the conversation so
    far; the raw bytes of every answer."""
    messages: Any = [SYSTEM]
    out = []
    for q in questions:
        messages.append({"role": "user", "content": q})
        raw = oai.chat.completions.with_raw_response.create(model=MOCK_MODEL,
                                                            messages=messages, max_tokens=6)
        messages.append({"role": "assistant",
                         "content": raw.parse().choices[0].message.content})
        out.append(raw.content)
    return out


def _replay_run(client: TestClient[Any], ctx: dict[str, Any], mode: str) -> str:
    flow_id = client.get(f"/v1/runs/{ctx['run_id']}").json()["flow_id"]
    resp = client.post(f"/v1/flows/{flow_id}/runs",
                       json={"seed": 7, "mode": mode, "replay_of": ctx["run_id"]})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["run_id"])


@given("a record run on the mock engine, used through the official openai SDK")
def record_run(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A fresh record Run and an SDK pointed at it."""
    ctx["run_id"] = new_run(client)
    ctx["oai"] = sdk(client, ctx["run_id"])


@when(parsers.parse('the agent asks "{question}"'))
def asks(ctx: dict[str, Any], question: str) -> None:
    """One chat call."""
    ctx["raw"] = ctx["oai"].chat.completions.with_raw_response.create(
        model=MOCK_MODEL, messages=[{"role": "user", "content": question}], max_tokens=5)
    ctx["question"] = question


@then("the answer names its Step, an llm_call of the Run with client_token occurrence 0")
def names_its_step(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """X-Step-Id is the Step; its token is ``oai:<key>:0``."""
    step = client.get(f"/v1/steps/{ctx['raw'].headers['x-step-id']}").json()
    assert (step["type"], step["run_id"], step["status"]) == \
        ("llm_call", ctx["run_id"], "succeeded")
    assert step["input"]["messages"] == [{"role": "user", "content": ctx["question"]}]
    assert re.fullmatch(r"oai:[0-9a-f]{64}:0", step["client_token"])
    ctx["token"] = step["client_token"]


@then("asking the same again is occurrence 1 of the same call")
def occurrence_one(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """The same request again is a new Step with the next occurrence."""
    asks(ctx, ctx["question"])
    step = client.get(f"/v1/steps/{ctx['raw'].headers['x-step-id']}").json()
    assert step["client_token"] == ctx["token"][:-1] + "1"


@when(parsers.parse('the agent asks "{question}" with the get_weather tool required'))
def asks_with_tool(ctx: dict[str, Any], question: str) -> None:
    """A chat call with one required tool."""
    ctx["answer"] = ctx["oai"].chat.completions.create(
        model=MOCK_MODEL, messages=[{"role": "user", "content": question}], tools=[WEATHER],
        tool_choice="required")


@then("the answer is tool_calls of get_weather with finish_reason tool_calls")
def tool_calls(ctx: dict[str, Any]) -> None:
    """Every call names get_weather with a JSON object holding ``city``."""
    choice = ctx["answer"].choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert call.function.name == "get_weather"
        assert sorted(msgspec.json.decode(call.function.arguments)) == ["city"]


@given(parsers.parse('the agent asked "{first}" and "{second}"'))
def recorded(ctx: dict[str, Any], first: str, second: str) -> None:
    """A two-turn conversation recorded."""
    ctx["questions"] = (first, second)
    ctx["recorded"] = ask(ctx["oai"], first, second)


@when(parsers.parse("the agent runs again against a {mode} run of it"))
def runs_again(client: TestClient[Any], ctx: dict[str, Any], mode: str) -> None:
    """The unchanged agent on a new replay Run; engine requests counted around it."""
    run_id = _replay_run(client, ctx, mode)
    before = engine_requests(client)
    ctx["answers"] = ask(sdk(client, run_id), *ctx["questions"])
    ctx["engine_requests"] = engine_requests(client) - before


@then(parsers.parse("it gets the recorded answers, byte for byte, with {n:d} engine requests"))
def same_bytes(ctx: dict[str, Any], n: int) -> None:
    """Every answer's bytes equal the recording's."""
    assert ctx["answers"] == ctx["recorded"]
    assert ctx["engine_requests"] == n


@when(parsers.parse('the agent asks "{question}" as its second question in a replay run'))
def changed(client: TestClient[Any], ctx: dict[str, Any], question: str) -> None:
    """The first question unchanged, the second changed."""
    oai = sdk(client, _replay_run(client, ctx, "replay"))
    with pytest.raises(openai.APIStatusError) as caught:
        ask(oai, ctx["questions"][0], question)
    ctx["error"] = caught.value


@then(parsers.parse("the SDK raises {kind} naming {field}"))
def raises_naming(ctx: dict[str, Any], kind: str, field: str) -> None:
    """The SDK's error class, and a message and param naming the field."""
    err = ctx["error"]
    assert type(err).__name__ == kind
    assert (err.body["code"], err.body["param"]) == ("NONDETERMINISM", field)
    assert err.body["message"].endswith(f"which differs at {field}")


@when(parsers.parse("the agent asks with n {n:d}"))
def asks_n(client: TestClient[Any], ctx: dict[str, Any], n: int) -> None:
    """A call with an unhonoured parameter."""
    ctx["before"] = engine_requests(client)
    with pytest.raises(openai.APIStatusError) as caught:
        ctx["oai"].chat.completions.create(model=MOCK_MODEL, n=n,
                                           messages=[{"role": "user", "content": "hi"}])
    ctx["error"] = caught.value


@then(parsers.parse("the SDK raises {kind} with param {param} and code {code}"))
def raises_param(ctx: dict[str, Any], kind: str, param: str, code: str) -> None:
    """The SDK's error class and OpenAI's error body."""
    err = ctx["error"]
    assert type(err).__name__ == kind
    assert err.body == {"message": "n: only one choice per call is supported (n=1)",
                        "type": "invalid_request_error", "code": code, "param": param}


@then("the engine received 0 requests")
def no_engine(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """Nothing reached an engine."""
    assert engine_requests(client) == ctx["before"]


DEEP = b'{"model": "m", "messages": ' + b"[" * 500 + b"]" * 500 + b"}"


@when("a body nested 500 levels deep is posted to the facade")
def deep_to_facade(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """A hostile body on the facade."""
    ctx["resp"] = client.post(f"/v1/runs/{ctx['run_id']}/openai/v1/chat/completions",
                              content=DEEP, headers={"Content-Type": "application/json"})


@then("the answer is 400 with an OpenAI error body of param body")
def openai_400(ctx: dict[str, Any]) -> None:
    """OpenAI's shape, not the envelope."""
    resp = ctx["resp"]
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert (set(resp.json()), err["type"], err["code"], err["param"]) == \
        ({"error"}, "invalid_request_error", "INVALID_PARAMS", "body")


@when("the same body is posted to the native step route")
def deep_to_native(client: TestClient[Any], ctx: dict[str, Any]) -> None:
    """The same hostile body on ``POST /v1/runs/{id}/steps``."""
    ctx["resp"] = client.post(f"/v1/runs/{ctx['run_id']}/steps", content=DEEP,
                              headers={"Content-Type": "application/json"})


@then("the answer is 400 with the flat error envelope")
def native_400(ctx: dict[str, Any]) -> None:
    """``{code, message, retriable, data}``."""
    resp = ctx["resp"]
    assert resp.status_code == 400
    assert (sorted(resp.json()), resp.json()["code"]) == \
        (["code", "data", "message", "retriable"], "INVALID_PARAMS")
