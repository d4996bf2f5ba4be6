"""The sans-IO core of the Python clients: Calls, the SSE decoder, the frame reader and
the retry policy [NERVE-4110] [NERVE-4111] [NERVE-4112]."""

from __future__ import annotations

import inspect
import json
import pathlib
import re
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from contracts.errors import InvalidParams, QueueFull
from contracts.events import NarrationData, TokenData
from orchestratord import client_browse, client_llm, client_pools, client_runs
from orchestratord import client_recording_calls as recording_calls
from orchestratord import client_routes as routes
from orchestratord.client_calls import (
    Call,
    FrameReader,
    RetryPolicy,
    Sse,
    SseDecoder,
    StreamCall,
    error_of,
)
from orchestratord.client_errors import StreamDisconnected
from orchestratord.client_frames import Frame

_STREAM = (b"id: 0\nevent: started\ndata: {\"type\":\"llm_call\",\"queue_position\":0,"
           b"\"predicted_start_ms\":0}\n\n: keep-alive\n\n"
           b"event: narration\ndata: {\"text\":\"thinking\"}\n\n"
           b"id: 1\r\nevent: token\r\ndata: {\"i\":0,\"t\":\"h\\u00e9\",\"id\":7}\r\n\r\n"
           b"id: 2\revent: end\rdata: {\"output\":\"h\\u00e9\",\"finish_reason\":\"stop\"}\r\r"
           b"id: 3\nevent: token\ndata: {\"i\":1,\"t\":\"x\",\"id\":8}\n\n")


def _events(chunks: list[bytes]) -> list[Sse]:
    decoder = SseDecoder()
    return [e for chunk in chunks for e in decoder.feed(chunk)]


class TestSseDecoder:
    """One incremental SSE parser over byte chunks [NERVE-4111]."""

    def test_every_split_of_the_bytes_gives_the_same_events(self) -> None:
        """Cut anywhere, a ``\\r\\n`` split included, the stream decodes to the same five
        events; comments and blank keep-alives dispatch nothing."""
        whole = _events([_STREAM])
        splits = {tuple(_events([_STREAM[:k], _STREAM[k:]])) for k in range(len(_STREAM))}
        one_by_one = _events([_STREAM[k:k + 1] for k in range(len(_STREAM))])
        assert [(e.event, e.id) for e in whole] == [
            ("started", "0"), ("narration", None), ("token", "1"), ("end", "2"),
            ("token", "3")]
        assert (splits, one_by_one) == ({tuple(whole)}, whole)

    def test_data_lines_join_and_an_unfinished_event_is_dropped(self) -> None:
        """Two ``data:`` lines join with a newline, a field without a colon is a name
        with an empty value, a missing ``event:`` is ``message``, and bytes after the
        last blank line are not an event; the last id carries over."""
        decoder = SseDecoder()
        got = decoder.feed(b"id: 9\ndata: a\ndata:b\nretry\n\ndata: cut")
        assert (got, decoder.last_event_id) == ([Sse(event="message", data="a\nb", id="9")],
                                                "9")


class TestFrameReader:
    """Typed frames until the terminal one [NERVE-4111] [NERVE-4072]."""

    def test_frames_are_typed_and_stop_at_the_terminal_frame(self) -> None:
        """Payloads decode to their Structs, the ephemeral narration has no id, and the
        token after ``end`` is not read."""
        reader = FrameReader("stp_1", Frame.decode)
        frames = reader.feed(_STREAM)
        assert [(f.id, f.event) for f in frames] == [
            (0, "started"), (None, "narration"), (1, "token"), (2, "end")]
        assert (frames[1].data, frames[2].data, reader.done, reader.last, reader.ended()) == (
            NarrationData(text="thinking"), TokenData(i=0, t="hé", id=7), True, 2, None)

    def test_a_stream_without_its_terminal_frame_is_disconnected(self) -> None:
        """Closed after frame 1, a Step's stream is ``ERR_STREAM_DISCONNECTED`` naming
        that id; a Run-level stream has no terminal frame and just ends."""
        step = FrameReader("stp_1", Frame.decode)
        run = FrameReader("run_1", Frame.decode, kind="run", terminals=frozenset())
        step.feed(_STREAM[:_STREAM.index(b"id: 2")])
        run.feed(_STREAM[:_STREAM.index(b"id: 2")])
        cut = step.ended()
        broken = run.broken(httpx.ReadError("reset"))
        assert isinstance(cut, StreamDisconnected)
        assert (str(cut), run.ended(), str(broken), broken.kind) == (
            "the stream of step stp_1 ended without a terminal frame after event id 1: "
            "the server closed the stream", None,
            "the stream of run run_1 ended without a terminal frame after event id 1: "
            "ReadError: reset", "run")


class TestRetryPolicy:
    """No retry unless configured; then only what is safe to send again [NERVE-4112]."""

    @pytest.mark.parametrize(("policy", "idempotent", "attempt", "exc", "delay"), [
        (RetryPolicy(), True, 0, QueueFull("full", retry_after_ms=10), None),
        (RetryPolicy(max_retries=2), True, 0, QueueFull("full", retry_after_ms=10), 0.01),
        (RetryPolicy(max_retries=2), True, 0, QueueFull("full", retry_after_ms=60_000), 8.0),
        (RetryPolicy(max_retries=2), True, 1, httpx.ConnectError("refused"), 1.0),
        (RetryPolicy(max_retries=2), True, 2, httpx.ConnectError("refused"), None),
        (RetryPolicy(max_retries=2), False, 0, QueueFull("full", retry_after_ms=10), None),
        (RetryPolicy(max_retries=2), True, 0, InvalidParams("bad"), None),
        (RetryPolicy(max_retries=2), True, 0, ValueError("bug"), None),
    ], ids=["default-none", "retry-after", "capped", "transport", "exhausted",
            "not-idempotent", "not-retriable", "not-a-wire-error"])
    def test_the_wait_before_the_next_attempt(self, policy: RetryPolicy, idempotent: bool,
                                              attempt: int, exc: Exception,
                                              delay: float | None) -> None:
        """The wait is the server's ``retry_after_ms`` (capped at 8 s) or 0.5 s doubled
        per attempt, and None (raise) by default, past ``max_retries``, for a
        non-idempotent call or a non-retriable error."""
        assert policy.delay(idempotent, attempt, exc) == delay


class TestCalls:
    """Each route is one Call description [NERVE-4110]."""

    def test_a_call_builds_its_request_and_parses_its_answer(self) -> None:
        """``list_runs`` drops unset filters and reads the next cursor from ``Link``;
        ``submit_step`` without a token is not idempotent, with one it is; a non-JSON
        error body becomes a non-retriable ``INTERNAL`` error naming its status."""
        http = httpx.Client(base_url="http://o")
        call = routes.list_runs("flw 1", label="k:v", limit=2)
        page = call.parse(httpx.Response(200, json=[], headers={
            "link": '</v1/flows/f/runs?limit=2&after=run_2>; rel="next"'}))
        err = error_of(httpx.Response(502, text="<html>bad gateway</html>"))
        assert str(call.request(http).url) == \
            "http://o/v1/flows/flw%201/runs?label=k%3Av&limit=2"
        assert (page, routes.submit_step("r", {}).idempotent,
                routes.submit_step("r", {"client_token": "t"}).idempotent,
                routes.create_run("f", {}).idempotent) == (([], "run_2"), False, True, False)
        assert (err.code, err.message, err.retriable) == (
            "INTERNAL", "HTTP 502: <html>bad gateway</html>", False)
        http.close()


def _built_routes() -> set[tuple[str, str]]:
    """(method, path template) of every Call and StreamCall the builders make, each path
    parameter written ``{}``."""
    found: set[tuple[str, str]] = set()
    for module in (routes, client_llm, client_runs, client_browse, recording_calls,
                   client_pools):
        for name in module.__all__:
            fn = getattr(module, name)
            if not inspect.isfunction(fn) or name in ("submitted", "page_of"):
                continue
            args: list[Any] = [
                {} if p.name in ("body", "fields", "fact", "filters", "ast_ir")
                else b"" if p.name == "data" else f"{{{p.name}}}"
                for p in inspect.signature(fn).parameters.values()
                if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
            call = fn(*args)
            assert isinstance(call, Call | StreamCall), name
            found.add((call.method, re.sub(r"\{[a-z_]+\}", "{}", unquote(call.path))))
    return found


class TestEveryRoute:
    """The clients cover every route of the native API [NERVE-4110]."""

    def test_every_operation_of_the_openapi_document_has_a_call(self) -> None:
        """Each operation of ``contracts/openapi.json`` but the OpenAI facade's (the
        official SDK is its client) is built by one Call builder, and no builder names
        an operation the document lacks."""
        doc = json.loads((pathlib.Path(__file__).resolve().parents[2] / "contracts"
                          / "openapi.json").read_text())
        documented = {(method.upper(), re.sub(r"\{[a-z_]+\}", "{}", path))
                      for path, ops in doc["paths"].items() for method in ops
                      if method in ("get", "post") and "/openai/v1/" not in path}
        assert _built_routes() == documented
