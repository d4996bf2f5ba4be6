"""The Python client's errors carry the client contract's names [NERVE-4072]."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from contracts.errors import ContextBudget, InvalidModel, NotFound, OrchestratorError
from orchestratord.client import (
    ERR_CONTEXT_BUDGET,
    ERR_INVALID_MODEL,
    ERR_SERVER,
    ERR_STREAM_DISCONNECTED,
    OrchestratorClient,
    StreamDisconnected,
)

_HEAD = (b'id: 0\nevent: started\ndata: {"type":"llm_call","queue_position":0,'
         b'"predicted_start_ms":0}\n\nid: 1\nevent: token\ndata: {"i":0,"t":"a","id":5}\n\n')
_SSE = {"content-type": "text/event-stream", "x-step-id": "stp_1"}


async def _broken() -> AsyncIterator[bytes]:
    yield _HEAD
    raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


class TestErrorNames:
    """``ERR_*`` names are the typed errors the client raises [NERVE-4072]."""

    def test_the_names_alias_the_typed_errors(self) -> None:
        """``ERR_INVALID_MODEL``, ``ERR_CONTEXT_BUDGET`` and ``ERR_SERVER`` are the
        contract classes; ``ERR_STREAM_DISCONNECTED`` is the client's own."""
        assert (ERR_INVALID_MODEL, ERR_CONTEXT_BUDGET, ERR_SERVER, ERR_STREAM_DISCONNECTED,
                StreamDisconnected.name, StreamDisconnected.retriable) == (
            InvalidModel, ContextBudget, OrchestratorError, StreamDisconnected,
            "ERR_STREAM_DISCONNECTED", True)

    @pytest.mark.anyio
    async def test_a_refusal_is_caught_by_its_contract_name(self) -> None:
        """An ``INVALID_MODEL`` envelope raises ``ERR_INVALID_MODEL`` with its data, and a
        ``NOT_FOUND`` one is an ``ERR_SERVER``."""
        def serve(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/steps/stp_9":
                return httpx.Response(404, json={"code": "NOT_FOUND", "message": "no step",
                                                 "retriable": False})
            return httpx.Response(400, json={"code": "INVALID_MODEL", "message": "no pool",
                                             "retriable": False, "data": {"field": "model"}})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            with pytest.raises(ERR_INVALID_MODEL) as refused:
                await oc.submit_step("run_1", {"client_token": "c", "type": "llm_call"})
            with pytest.raises(ERR_SERVER) as missing:
                await oc.get_step("stp_9")
        assert (refused.value.message, refused.value.data) == ("no pool", {"field": "model"})
        assert type(missing.value) is NotFound


class TestStreamDisconnected:
    """A stream without its terminal frame raises ``ERR_STREAM_DISCONNECTED`` once."""

    @pytest.mark.anyio
    @pytest.mark.parametrize(("body", "reason"), [
        (_HEAD, "the server closed the stream"),
        (_broken(), "RemoteProtocolError: peer closed connection without sending "
                    "complete body"),
    ], ids=["clean-end", "broken-connection"])
    async def test_a_stream_cut_before_its_terminal_frame(
            self, body: bytes | AsyncIterator[bytes], reason: str) -> None:
        """The frames received are yielded, then ``StreamDisconnected`` names the Step
        and the last event id to resume from; the client made one request, no retry."""
        requests: list[str] = []

        def serve(request: httpx.Request) -> httpx.Response:
            requests.append(f"{request.method} {request.url.path}")
            return httpx.Response(201, content=body, headers=_SSE)

        got: list[str] = []

        async def read(oc: OrchestratorClient) -> None:
            async with oc.submit_stream("run_1", {"client_token": "c"}) as sub:
                async for frame in sub.frames():
                    got.append(frame.event)

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            with pytest.raises(ERR_STREAM_DISCONNECTED) as cut:
                await read(oc)
        assert (got, cut.value.step_id, cut.value.last_event_id, requests) == (
            ["started", "token"], "stp_1", 1, ["POST /v1/runs/run_1/steps"])
        assert str(cut.value) == (
            f"the stream of step stp_1 ended without a terminal frame after event id 1: "
            f"{reason}")
