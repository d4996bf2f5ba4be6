"""The client contract's LLM job lifecycle, end to end on the in-process app with the mock
engine (NERVE-4080..NERVE-4089)."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from typing import Any, TypeVar

import anyio
import blake3
import httpx
import msgspec
import pytest
from litestar.testing import TestClient
from litestar.testing.transport import TestClientTransport as AppTransport
from pytest_bdd import given, parsers, scenarios, then, when

from contracts.canonical import canonical_json
from contracts.errors import ContextBudget, InvalidModel
from contracts.llm import DoneEvent, ErrorEvent, LlmStreamEvent, TokenEvent
from orchestrator_core.config import ServerConfig
from orchestratord.client import ERR_STREAM_DISCONNECTED, OrchestratorClient
from test_harness.conftest import with_options
from test_harness.store_param import db_connection
from test_harness.support import app_client, parse_sse

scenarios("llm_lifecycle.feature")

CONTRACT = {"type": "object", "properties": {"summary": {"type": "string"}},
            "required": ["summary"]}
PROMPT = "Summarize ADR-013 in <=80 words.\n"
UNKNOWN_JOB = "stp_" + "0" * 24
_T = TypeVar("_T")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Closes the scenario's app at teardown."""
    with ExitStack() as s:
        yield s


def _as(ctx: dict[str, Any], tenant: str = "alpha") -> dict[str, str]:
    return {"Authorization": f"Bearer {ctx['tokens'][tenant]}"}


def _client(ctx: dict[str, Any]) -> TestClient[Any]:
    """The scenario's app, started on first use (after any engine option is set)."""
    if "client" not in ctx:
        ctx["client"] = ctx["stack"].enter_context(app_client(ctx["cfg"]))
    client: TestClient[Any] = ctx["client"]
    return client


class _App(httpx.AsyncBaseTransport):
    """The in-process app as an async httpx transport. Litestar's test transport buffers
    each answer whole: a stream is read once its job has ended."""

    def __init__(self, client: TestClient[Any]) -> None:
        self._app = AppTransport(client=client, raise_server_exceptions=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return self._app.handle_request(request)


def _python_client(ctx: dict[str, Any], tenant: str = "alpha",
                   transport: httpx.AsyncBaseTransport | None = None) -> OrchestratorClient:
    """The async Python client on the in-process app."""
    return OrchestratorClient("http://127.0.0.1", token=ctx["tokens"][tenant],
                              transport=transport or _App(_client(ctx)))


def _run(fn: Callable[[], Awaitable[_T]]) -> _T:
    return anyio.run(fn)


def _enqueue(ctx: dict[str, Any], body: dict[str, Any], tenant: str = "alpha") -> \
        httpx.Response:
    resp: httpx.Response = _client(ctx).post("/v1/llm/jobs", json=body,
                                              headers=_as(ctx, tenant))
    return resp


def _events(ctx: dict[str, Any], job_id: str, tenant: str = "alpha",
            headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    with _client(ctx).stream("GET", f"/v1/llm/jobs/{job_id}/events",
                             headers={**_as(ctx, tenant), **(headers or {})}) as s:
        raw = b"".join(s.iter_bytes())
    return parse_sse(raw)


def _db(ctx: dict[str, Any]) -> Any:
    """The server's store, on either backend (PG-9053)."""
    return db_connection(ctx["cfg"].data_dir)


@given(parsers.parse('a server with tokens "{ta}" for tenant "{a}" and "{tb}" for tenant '
                     '"{b}"'))
def server(stack: ExitStack, mock_cfg: ServerConfig, ctx: dict[str, Any], ta: str, a: str,
           tb: str, b: str) -> None:
    """Two tenants on the mock engine; the app starts on first use."""
    ctx["stack"] = stack
    ctx["cfg"] = msgspec.structs.replace(mock_cfg, auth_tokens={ta: a, tb: b})
    ctx["tokens"] = {a: ta, b: tb}


@given(parsers.parse("the engine streams {rate:d} tokens a second"))
def paced(ctx: dict[str, Any], rate: int) -> None:
    """A paced mock engine with long answers, so a job is cancelled mid-stream."""
    ctx["cfg"] = with_options(ctx["cfg"], tokens_per_s=rate, length=3000)


# -- discover -> enqueue -> stream -----------------------------------------------------


@given(parsers.parse('the orchestrator advertises a model "{pattern}"'))
def advertised(ctx: dict[str, Any], pattern: str) -> None:
    """``capabilities()`` through the Python client; the first model matching is kept."""
    async def discover() -> Any:
        async with _python_client(ctx) as oc:
            return await oc.llm.capabilities()

    caps = _run(discover)
    ids = [m.id for m in caps.models if m.id.startswith(pattern.rstrip("*"))]
    assert (ids, caps.models[0].context_tokens, caps.models[0].features[:4],
            caps.server_version, caps.limits["llm_max_attachment_bytes"]) == (
        ["mock:echo-1"], 4096, ["prompt", "messages", "stream", "response_contract"],
        "orchestratord 0.1.0", 262144)
    ctx["model"] = ids[0]


@when("I enqueue a job with that model and a JSON schema contract")
def enqueue_with_contract(ctx: dict[str, Any]) -> None:
    """``enqueue`` then ``stream`` through the Python client."""
    async def go() -> tuple[Any, list[LlmStreamEvent]]:
        async with _python_client(ctx) as oc:
            job = await oc.llm.enqueue(ctx["model"], PROMPT, response_contract=CONTRACT,
                                       metadata={"request_id": "req-42"})
            return job, [e async for e in oc.llm.stream(job.id)]

    ctx["job"], ctx["stream"] = _run(go)


@then('I should receive a stream of token events and a final "done"')
def tokens_then_done(ctx: dict[str, Any]) -> None:
    """A ``log`` (started), token events, then ``done``, typed."""
    kinds = [type(e).__name__ for e in ctx["stream"]]
    assert kinds == ["LogEvent", *["TokenEvent"] * (len(kinds) - 2), "DoneEvent"]
    assert len(kinds) > 2
    assert ctx["job"].model == "mock:echo-1"
    assert ctx["job"].enqueued_at.endswith("Z")


@then('no "error" events MUST occur')
def no_error(ctx: dict[str, Any]) -> None:
    """Nothing of type error."""
    assert [e for e in ctx["stream"] if isinstance(e, ErrorEvent)] == []


@then("the tokens concatenate to a document the contract accepts")
def document(ctx: dict[str, Any]) -> None:
    """The mock's schema-shaped answer, and the Step's recorded value."""
    text = "".join(e.text for e in ctx["stream"] if isinstance(e, TokenEvent))
    step = _client(ctx).get(f"/v1/steps/{ctx['job'].id}", headers=_as(ctx)).json()
    assert json.loads(text) == {"summary": "replay"}
    assert (step["type"], step["status"], step["input"]) == (
        "llm_call", "succeeded",
        {"model": "mock:echo-1", "prompt": PROMPT, "response_contract": CONTRACT,
         "params": {"max_tokens": 256, "min_p": 0.05, "repeat_penalty": 1, "seed": None,
                    "stop": [], "temperature": 0, "top_k": 40, "top_p": 0.95}})


# -- cancel ------------------------------------------------------------------------------


@when(parsers.parse("I enqueue a long job and cancel it once it has streamed {n:d} tokens"))
def cancel_mid_stream(ctx: dict[str, Any], n: int) -> None:
    """Cancel while the engine is still generating (the Step's log holds ``started`` and
    ``n`` tokens, far from its 256)."""
    job = _enqueue(ctx, {"model": "mock:echo-1", "prompt": "a long story"}).json()
    ctx["job_id"] = job["id"]
    deadline = time.monotonic() + 10
    while _client(ctx).get(f"/v1/steps/{job['id']}",
                           headers=_as(ctx)).json()["last_seq"] < n:
        assert time.monotonic() < deadline, "the job never streamed"
        time.sleep(0.005)
    ctx["cancel"] = _client(ctx).post(f"/v1/llm/jobs/{job['id']}/cancel", headers=_as(ctx))


@then(parsers.parse('the cancel answers 202 with status "{status}"'))
def cancel_202(ctx: dict[str, Any], status: str) -> None:
    """The live job's cancel is accepted."""
    assert (ctx["cancel"].status_code, ctx["cancel"].json()) == (202, {"status": status})


@then(parsers.parse('the stream holds token events, then one "error" event with code '
                    '"{code}", and no "done"'))
def cancelled_stream(ctx: dict[str, Any], code: str) -> None:
    """Ids are the Step's sequence numbers; the last event is the error."""
    frames = _events(ctx, ctx["job_id"])
    kinds = [f["event"] for f in frames]
    assert kinds[0] == "log" and kinds[-1] == "error" and "done" not in kinds
    assert set(kinds[1:-1]) == {"token"} and len(kinds) < 100
    assert [f["id"] for f in frames] == list(range(len(frames)))
    error = json.loads(frames[-1]["data"])
    assert (error["type"], error["code"]) == ("error", code)


@then(parsers.parse('cancelling it again answers 200 with the job, status "{status}"'))
def cancel_again(ctx: dict[str, Any], status: str) -> None:
    """The finished job is returned unchanged."""
    again = _client(ctx).post(f"/v1/llm/jobs/{ctx['job_id']}/cancel", headers=_as(ctx))
    assert (again.status_code, again.json()["status"], again.json()["id"]) == (
        200, status, ctx["job_id"])


# -- a dropped connection ---------------------------------------------------------------


class _Dropping(httpx.AsyncBaseTransport):
    """Forwards to the app; a job's event stream is cut after ``keep`` events, as a
    broken connection would end it."""

    def __init__(self, inner: Any, keep: int) -> None:
        self.inner = inner
        self.keep = keep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp: httpx.Response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/events") or "last-event-id" in request.headers:
            return resp
        blocks = (await resp.aread()).split(b"\n\n")[:self.keep]

        async def cut() -> AsyncIterator[bytes]:
            yield b"\n\n".join(blocks) + b"\n\n"
            raise httpx.RemoteProtocolError("peer closed connection without sending "
                                            "complete body")

        headers = [(k, v) for k, v in resp.headers.items() if k != "content-length"]
        return httpx.Response(resp.status_code, headers=headers, content=cut())


@when(parsers.parse("I enqueue a job and read its stream through a connection that drops "
                    "after {keep:d} events"))
def dropped(ctx: dict[str, Any], keep: int) -> None:
    """The events before the cut are yielded, then the client raises."""
    inner = _App(_client(ctx))

    async def go() -> None:
        async with _python_client(ctx, transport=_Dropping(inner, keep)) as oc:
            job = await oc.llm.enqueue("mock:echo-1", "drop me")
            ctx["job_id"], got = job.id, []
            try:
                async for event in oc.llm.stream(job.id):
                    got.append(event)
            except ERR_STREAM_DISCONNECTED as exc:
                ctx["raised"] = exc
            ctx["before"] = got

    _run(go)


@then(parsers.parse("the client raises ERR_STREAM_DISCONNECTED naming the job and event id "
                    "{last:d}"))
def raised(ctx: dict[str, Any], last: int) -> None:
    """The error names the job and the last id received; the events before it came."""
    exc = ctx["raised"]
    assert (exc.name, exc.step_id, exc.last_event_id, exc.retriable) == (
        "ERR_STREAM_DISCONNECTED", ctx["job_id"], last, True)
    assert [type(e).__name__ for e in ctx["before"]] == ["LogEvent", "TokenEvent",
                                                         "TokenEvent"]


@then(parsers.parse('reading again from event id {last:d} gives the rest, ending with '
                    '"done", with nothing repeated or missed'))
def resumed(ctx: dict[str, Any], last: int) -> None:
    """``stream(job, last_event_id)`` yields the remainder; both parts are the whole."""
    async def go() -> list[LlmStreamEvent]:
        async with _python_client(ctx) as oc:
            return [e async for e in oc.llm.stream(ctx["job_id"], last_event_id=last)]

    rest = _run(go)
    whole = [msgspec.json.decode(f["data"], type=LlmStreamEvent)
             for f in _events(ctx, ctx["job_id"])]
    assert isinstance(rest[-1], DoneEvent)
    assert ctx["before"] + rest == whole


# -- resume after the end, tickets ------------------------------------------------------


@when("I enqueue a job and read its stream to the end")
def read_to_end(ctx: dict[str, Any]) -> None:
    """One job, its whole stream."""
    ctx["job_id"] = _enqueue(ctx, {"model": "mock:echo-1", "prompt": "p"}).json()["id"]
    ctx["frames"] = _events(ctx, ctx["job_id"])


@then(parsers.parse('a re-read with Last-Event-ID at the "done" event answers 204'))
def after_end(ctx: dict[str, Any]) -> None:
    """[STREAM-2012] ``EventSource`` stops reconnecting."""
    done = ctx["frames"][-1]
    resp = _client(ctx).get(f"/v1/llm/jobs/{ctx['job_id']}/events",
                            headers={**_as(ctx), "Last-Event-ID": str(done["id"])})
    assert (done["event"], resp.status_code, resp.content) == ("done", 204, b"")


@then("a stream ticket of the job's step opens its events without a bearer token")
def ticket(ctx: dict[str, Any]) -> None:
    """[NERVE-4054] The same bytes as with the bearer token; no ticket is 401."""
    c = _client(ctx)
    tk = c.post(f"/v1/steps/{ctx['job_id']}/stream-ticket", headers=_as(ctx)).json()
    with c.stream("GET", f"/v1/llm/jobs/{ctx['job_id']}/events",
                  params={"ticket": tk["ticket"]}) as s:
        frames = parse_sse(b"".join(s.iter_bytes()))
    bare = c.get(f"/v1/llm/jobs/{ctx['job_id']}/events")
    assert (frames, bare.status_code) == (ctx["frames"], 401)


# -- attachments and metadata -----------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@when(parsers.parse('I enqueue a job with attachments "{n1}" = "{t1}" and "{n2}" = "{t2}" '
                    'and metadata {meta}'))
def with_attachments(ctx: dict[str, Any], n1: str, t1: str, n2: str, t2: str,
                     meta: str) -> None:
    """Two attachments, and a second job bringing the first one again."""
    body = {"model": "mock:echo-1", "prompt": "read these",
            "attachments": {n1: _b64(t1), n2: _b64(t2)}, "metadata": json.loads(meta)}
    resp = _enqueue(ctx, body)
    again = _enqueue(ctx, {"model": "mock:echo-1", "prompt": "again",
                           "attachments": {"copy.md": _b64(t1)}})
    assert (resp.status_code, again.status_code) == (201, 201), resp.text
    ctx["job_id"] = resp.json()["id"]
    ctx["info"] = _client(ctx).get(f"/v1/llm/jobs/{ctx['job_id']}", headers=_as(ctx)).json()


@then("getting the job lists the attachments by name with their sha256 and size")
def listed(ctx: dict[str, Any]) -> None:
    """sha256("# ADR 13") and sha256("hello"), by name."""
    assert ctx["info"]["attachments"] == [
        {"name": "adr-013.md",
         "sha256": "c686f4442ff865c89061f382e34d11a54f1c91c317457e5502db9bfad6bf16e0",
         "size": 8},
        {"name": "b.bin",
         "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
         "size": 5}]
    assert (ctx["info"]["id"], ctx["info"]["status"] in ("queued", "running", "succeeded"),
            ctx["info"]["model"]) == (ctx["job_id"], True, "mock:echo-1")


@then(parsers.parse("the job's metadata is {meta}"))
def metadata_back(ctx: dict[str, Any], meta: str) -> None:
    """Returned as given."""
    assert ctx["info"]["metadata"] == json.loads(meta)


@then("the store holds each attachment's bytes once under the tenant and its sha256")
def stored_once(ctx: dict[str, Any]) -> None:
    """Content-addressed: the attachment two jobs brought is one row."""
    with contextlib.closing(_db(ctx)) as db:
        rows = db.execute("SELECT tenant, sha256, size, data FROM llm_attachments"
                          " ORDER BY size").fetchall()
    assert [(t, s, n, bytes(d)) for t, s, n, d in rows] == [
        ("alpha", "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", 5,
         b"hello"),
        ("alpha", "c686f4442ff865c89061f382e34d11a54f1c91c317457e5502db9bfad6bf16e0", 8,
         b"# ADR 13")]


def _key(body: dict[str, Any]) -> str:
    return blake3.blake3(canonical_json(body)).hexdigest()


@when(parsers.parse('I enqueue the prompt "{prompt}" twice, with metadata {m1} and with '
                    'metadata {m2}'))
def two_metadata(ctx: dict[str, Any], prompt: str, m1: str, m2: str) -> None:
    """Same prompt, other metadata."""
    ctx["bodies"] = [{"model": "mock:echo-1", "prompt": prompt, "metadata": json.loads(m)}
                     for m in (m1, m2)]
    ctx["jobs"] = [_enqueue(ctx, b).json()["id"] for b in ctx["bodies"]]
    for job in ctx["jobs"]:
        _events(ctx, job)
    ctx["steps"] = [_client(ctx).get(f"/v1/steps/{j}", headers=_as(ctx)).json()
                    for j in ctx["jobs"]]


@then("the two jobs are two steps with the derived client_tokens of their bodies, "
      "occurrence 0")
def derived_tokens(ctx: dict[str, Any]) -> None:
    """``job:<blake3 of the JCS body>:0`` each [NERVE-4082]."""
    assert [s["client_token"] for s in ctx["steps"]] == [
        f"job:{_key(b)}:0" for b in ctx["bodies"]]
    assert ctx["jobs"][0] != ctx["jobs"][1]


@then("both steps' provenance carry the same prompt_hash, the hash of the prompt alone")
def same_prompt_hash(ctx: dict[str, Any]) -> None:
    """``b3`` of ``{"prompt": ...}``: the metadata is not in it [NERVE-4083]."""
    expected = "b3:" + _key({"prompt": ctx["bodies"][0]["prompt"]})
    assert [s["provenance"]["prompt_hash"] for s in ctx["steps"]] == [expected, expected]


@when(parsers.parse('I enqueue the same body twice without a client_token, then twice with '
                    'client_token "{token}"'))
def idempotency(ctx: dict[str, Any], token: str) -> None:
    """Four enqueues, then one with the token and other metadata."""
    body = {"model": "mock:echo-1", "prompt": "idem", "metadata": {"v": 1}}
    ctx["body"] = body
    ctx["answers"] = [_enqueue(ctx, body), _enqueue(ctx, body),
                      _enqueue(ctx, {**body, "client_token": token}),
                      _enqueue(ctx, {**body, "client_token": token}),
                      _enqueue(ctx, {**body, "client_token": token, "metadata": {"v": 2}})]


@then("the first two are occurrences 0 and 1 of one derived key, both answered 201")
def occurrences(ctx: dict[str, Any]) -> None:
    """Two Steps: ``job:<key>:0`` and ``job:<key>:1``."""
    first, second = ctx["answers"][:2]
    tokens = [_client(ctx).get(f"/v1/steps/{r.json()['id']}", headers=_as(ctx)).json()
              ["client_token"] for r in (first, second)]
    key = _key(ctx["body"])
    assert ([first.status_code, second.status_code], tokens) == (
        [201, 201], [f"job:{key}:0", f"job:{key}:1"])


@then(parsers.parse('the two with "{token}" answer 201 then 200 with the same job'))
def same_token(ctx: dict[str, Any], token: str) -> None:
    """The repeat names the first."""
    third, fourth = ctx["answers"][2:4]
    assert (third.status_code, fourth.status_code, fourth.json()) == (201, 200, third.json())


@then(parsers.parse('"{token}" with other metadata answers 409 CONFLICT naming field '
                    '"{field}"'))
def conflict(ctx: dict[str, Any], token: str, field: str) -> None:
    """The job's identity covers its metadata."""
    last = ctx["answers"][4]
    assert (last.status_code, last.json()["code"], last.json()["data"]) == (
        409, "CONFLICT", {"field": field, "client_token": token,
                          "job_id": ctx["answers"][2].json()["id"]})


# -- replay ------------------------------------------------------------------------------


_REPLAYED: list[dict[str, Any]] = [{"model": "mock:echo-1", "prompt": "first job"},
             {"model": "mock:echo-1", "prompt": "second job", "metadata": {"k": 2}}]


@given(parsers.parse('a record run of tenant "{tenant}" holding two jobs enqueued without '
                     'client_token'))
def recorded(ctx: dict[str, Any], tenant: str) -> None:
    """A Flow, a record Run, two jobs in it read to the end."""
    c, auth = _client(ctx), _as(ctx, tenant)
    flow = c.post("/v1/flows", json={"ast_ir": {"jobs": 2}}, headers=auth).json()["flow_id"]
    run = c.post(f"/v1/flows/{flow}/runs", json={"seed": 7}, headers=auth).json()["run_id"]
    ctx["flow"], ctx["recorded_run"] = flow, run
    ctx["recorded"] = [_enqueue(ctx, {**b, "run_id": run}).json()["id"] for b in _REPLAYED]
    ctx["recorded_frames"] = [_events(ctx, j) for j in ctx["recorded"]]


@when("the same two jobs are enqueued into a replay run of it")
def replayed(ctx: dict[str, Any]) -> None:
    """Same bodies, the replay Run's id."""
    c = _client(ctx)
    run = c.post(f"/v1/flows/{ctx['flow']}/runs", headers=_as(ctx),
                 json={"mode": "replay", "replay_of": ctx["recorded_run"]}).json()["run_id"]
    answers = [_enqueue(ctx, {**b, "run_id": run}) for b in _REPLAYED]
    assert [a.status_code for a in answers] == [201, 201], answers[0].text
    ctx["replayed"] = [a.json()["id"] for a in answers]


@then("each replayed job is served from the recorded step with the recorded tokens")
def served(ctx: dict[str, Any]) -> None:
    """``replay_of_step`` names the recorded Step; the events are the same."""
    steps = [_client(ctx).get(f"/v1/steps/{j}", headers=_as(ctx)).json()
             for j in ctx["replayed"]]
    assert [s["replay_of_step"] for s in steps] == ctx["recorded"]
    assert [_events(ctx, j) for j in ctx["replayed"]] == ctx["recorded_frames"]


# -- tenants -----------------------------------------------------------------------------


@when(parsers.parse('tenant "{tenant}" enqueues a job'))
def alpha_job(ctx: dict[str, Any], tenant: str) -> None:
    """One job of that tenant."""
    resp = _enqueue(ctx, {"model": "mock:echo-1", "prompt": "mine"}, tenant)
    ctx["job_id"] = resp.json()["id"]
    ctx["job_run"] = _client(ctx).get(f"/v1/llm/jobs/{ctx['job_id']}",
                                      headers=_as(ctx, tenant)).json()["run_id"]


def _alike(theirs: httpx.Response, unknown: httpx.Response, mine: str, other: str) -> None:
    assert (theirs.status_code, theirs.text.replace(mine, other)) == (
        unknown.status_code, unknown.text)
    assert theirs.status_code == 404


@then(parsers.parse('tenant "{tenant}" reading, streaming and cancelling it gets the '
                    'answers of an unknown job id'))
def isolated(ctx: dict[str, Any], tenant: str) -> None:
    """404 ``NOT_FOUND`` with ``data.job_id``, byte for byte but for the id."""
    c, auth, job = _client(ctx), _as(ctx, tenant), ctx["job_id"]
    for method, suffix in (("GET", ""), ("GET", "/events"), ("POST", "/cancel")):
        theirs = c.request(method, f"/v1/llm/jobs/{job}{suffix}", headers=auth)
        unknown = c.request(method, f"/v1/llm/jobs/{UNKNOWN_JOB}{suffix}", headers=auth)
        _alike(theirs, unknown, job, UNKNOWN_JOB)
        assert unknown.json()["data"] == {"job_id": UNKNOWN_JOB}


@then(parsers.parse('tenant "{tenant}" enqueueing into alpha\'s run gets the answer of an '
                    'unknown run id'))
def isolated_run(ctx: dict[str, Any], tenant: str) -> None:
    """The Run of another tenant is an unknown Run."""
    other = "run_" + "0" * 24
    body = {"model": "mock:echo-1", "prompt": "theirs"}
    theirs = _enqueue(ctx, {**body, "run_id": ctx["job_run"]}, tenant)
    unknown = _enqueue(ctx, {**body, "run_id": other}, tenant)
    _alike(theirs, unknown, ctx["job_run"], other)


# -- hostile input -----------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"d": value}
    return value


_HOSTILE: dict[str, dict[str, Any]] = {
    'an attachment of 300 KiB "big.bin"': {
        "attachments": {"big.bin": base64.b64encode(b"\0" * 300 * 1024).decode()}},
    'an attachment "x.txt" of bad base64': {"attachments": {"x.txt": "not*base64!"}},
    "three attachments of 200 KiB": {
        "attachments": {f"a{i}": base64.b64encode(bytes([i]) * 200 * 1024).decode()
                        for i in range(3)}},
    "metadata nested 12 deep": {"metadata": _nested(12)},
    "metadata of 20 KiB": {"metadata": {"blob": "x" * 20 * 1024}},
}


@when(parsers.parse("I enqueue a hostile job with {what}"))
def hostile(ctx: dict[str, Any], what: str) -> None:
    """One hostile body."""
    ctx["answer"] = _enqueue(ctx, {"model": "mock:echo-1", "prompt": "h", **_HOSTILE[what]})


@then(parsers.parse('the answer is 400 INVALID_PARAMS naming field "{field}" for reason '
                    '"{reason}"'))
def refused(ctx: dict[str, Any], field: str, reason: str) -> None:
    """A typed 400 with the field and the reason."""
    resp = ctx["answer"]
    assert (resp.status_code, resp.json()["code"], resp.json()["data"]["field"],
            resp.json()["data"]["reason"]) == (400, "INVALID_PARAMS", field, reason)


@then("nothing was stored for it")
def nothing_stored(ctx: dict[str, Any]) -> None:
    """No Step, job or attachment row."""
    with contextlib.closing(_db(ctx)) as db:
        assert [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
                for t in ("steps", "llm_jobs", "llm_attachments")] == [0, 0, 0]


@when(parsers.parse('I enqueue through the Python client a job for model "{model}" and a job '
                    'whose prompt does not fit the context'))
def refused_by_admission(ctx: dict[str, Any], model: str) -> None:
    """Two refusals, caught by their contract names."""
    async def go() -> list[Exception]:
        caught: list[Exception] = []
        async with _python_client(ctx) as oc:
            for name, prompt in ((model, "hi"), ("mock:echo-1", "word " * 5000)):
                try:
                    await oc.llm.enqueue(name, prompt)
                except Exception as exc:
                    caught.append(exc)
        return caught

    ctx["caught"] = _run(go)


@then("the client raises ERR_INVALID_MODEL then ERR_CONTEXT_BUDGET")
def contract_names(ctx: dict[str, Any]) -> None:
    """The typed errors of the contract's names."""
    assert [type(e) for e in ctx["caught"]] == [InvalidModel, ContextBudget]

