"""The frame vocabulary: payload Structs name their frame type and keep the recorded bytes
(STREAM-2000, STREAM-2001, NERVE-4020).

The expected bytes below were produced by the code path before the vocabulary existed
(each call site encoding its payload and pairing it with a ``FrameType`` by hand, the
checkpoint payload a dict and the escalation payload ``breaker.Transition``), so they
pin that stores written then read, stream and replay unchanged.
"""

from __future__ import annotations

import httpx
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from contracts.errors import ErrorEnvelope
from contracts.events import (
    FRAME_PAYLOADS,
    BreakerState,
    CheckpointData,
    DurablePayload,
    EffectEndData,
    EndData,
    EphemeralPayload,
    ErrorData,
    EscalationData,
    FrameType,
    MetricsData,
    NarrationData,
    PlacementDecision,
    Provenance,
    StartedData,
    TerminalPayload,
    TokenData,
    ToolSuggestData,
    decode_frame_data,
    frame_type_of,
)
from contracts.facts import Fact
from orchestrator_core.clock import FakeClock
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.store import SqliteStore
from orchestratord.client import Frame, OrchestratorClient, StepResult, UntypedData

_PROV = Provenance(seed=7, prompt_hash="b3:p", params_hash="b3:q", engine="mock",
                   engine_version="1", engine_build="mock-1", model_hash="b3:m",
                   pool_id="default", replica_id="default-0", tokens_in=5, tokens_out=2,
                   cost_usd=0.0, decode_time_ms=3, finish_reason="stop", policy_hash="b3:pol",
                   price_table_version="v1")

_DURABLE: list[DurablePayload] = [
    StartedData(type="llm_call", queue_position=0, predicted_start_ms=0,
                placement=PlacementDecision(strategy="least_loaded", pool_id="default",
                                            replica_id="default-0", reason="1 free slot"),
                redactions=1),
    StartedData(type="tool_call", queue_position=0, predicted_start_ms=0),
    TokenData(i=0, t="h\u00e9", id=71, b="aMOp"),
    TokenData(i=1, t="", id=72, b="4g=="),
    ToolSuggestData(i=0, tool="search", args={"q": "x"}, valid=True),
    ToolSuggestData(i=1, tool="rm", args={}, valid=False, error=ErrorEnvelope(
        code="INVALID_TOOL_ARGS", message="rm is not on the menu",  # type: ignore[arg-type]
        retriable=False, data={"reason": "not_on_menu", "tool": "rm"})),
    Fact(fact_id="fct_1", run_id="run_1", seq=0, type="report", schema_uri="urn:demo:report",
         data={"ok": True}, emitted_by_step="stp_1", ts="2026-01-01T00:00:00Z"),
    CheckpointData(checkpoint_id="ckp_ab12", hash="ab12cd"),
    EscalationData(kind="circuit_breaker", target="default-0", from_state=BreakerState.CLOSED,
                   to_state=BreakerState.OPEN, failures=3, reason="ENGINE_ERROR: boom"),
]
_DURABLE_BYTES = [
    b'id: 0\nevent: started\ndata: {"type":"llm_call","queue_position":0,'
    b'"predicted_start_ms":0,"placement":{"strategy":"least_loaded","pool_id":"default",'
    b'"replica_id":"default-0","reason":"1 free slot"},"redactions":1}\n\n',
    b'id: 1\nevent: started\ndata: {"type":"tool_call","queue_position":0,'
    b'"predicted_start_ms":0,"placement":null,"redactions":0}\n\n',
    b'id: 2\nevent: token\ndata: {"i":0,"t":"h\xc3\xa9","id":71,"b":"aMOp"}\n\n',
    b'id: 3\nevent: token\ndata: {"i":1,"t":"","id":72,"b":"4g=="}\n\n',
    b'id: 4\nevent: tool_suggest\ndata: {"i":0,"tool":"search","args":{"q":"x"},'
    b'"valid":true}\n\n',
    b'id: 5\nevent: tool_suggest\ndata: {"i":1,"tool":"rm","args":{},"valid":false,'
    b'"error":{"code":"INVALID_TOOL_ARGS","message":"rm is not on the menu",'
    b'"retriable":false,"data":{"reason":"not_on_menu","tool":"rm"}}}\n\n',
    b'id: 6\nevent: fact\ndata: {"fact_id":"fct_1","run_id":"run_1","seq":0,"type":"report",'
    b'"schema_uri":"urn:demo:report","data":{"ok":true},"emitted_by_step":"stp_1",'
    b'"ts":"2026-01-01T00:00:00Z"}\n\n',
    b'id: 7\nevent: checkpoint\ndata: {"checkpoint_id":"ckp_ab12","hash":"ab12cd"}\n\n',
    b'id: 8\nevent: escalation\ndata: {"kind":"circuit_breaker","target":"default-0",'
    b'"from_state":"closed","to_state":"open","failures":3,"reason":"ENGINE_ERROR: boom"}\n\n',
]
_EFFECT_PROV = Provenance(tokens_in=0, tokens_out=0, cost_usd=0.0, policy_hash="b3:pol",
                          price_table_version="v1", executor="http", input_hash="b3:in",
                          wall_ms=15)
_LLM_ERROR_PROV = msgspec.structs.replace(_PROV, finish_reason=None)
_TERMINAL: list[TerminalPayload] = [
    EndData(provenance=_PROV, output={"text": "h\u00e9"}),
    EffectEndData(output={"rows": [1, 2]}, executor="http", duration_ms=12),
    ErrorData(code="CANCELLED", message="step cancelled",  # type: ignore[arg-type]
              retriable=False),
    ErrorData(code="BUDGET_EXCEEDED", message="budget",  # type: ignore[arg-type]
              retriable=False, retry_after_ms=100,
              data={"budget": "max_tokens_out", "limit": 2}),
    EffectEndData(output={"rows": [1, 2]}, executor="http", duration_ms=12,
                  provenance=_EFFECT_PROV),
    ErrorData(code="DEADLINE_EXCEEDED", message="late",  # type: ignore[arg-type]
              retriable=False, data={"budget": "max_wall_ms"}, provenance=_EFFECT_PROV),
    ErrorData(code="CANCELLED", message="step cancelled",  # type: ignore[arg-type]
              retriable=False, provenance=_LLM_ERROR_PROV),
]
_TERMINAL_BYTES = [
    b'id: 0\nevent: end\ndata: {"provenance":{"seed":7,"prompt_hash":"b3:p",'
    b'"params_hash":"b3:q","engine":"mock","engine_version":"1","engine_build":"mock-1",'
    b'"model_hash":"b3:m","pool_id":"default","replica_id":"default-0","tokens_in":5,'
    b'"tokens_out":2,"cost_usd":0.0,"decode_time_ms":3,"finish_reason":"stop",'
    b'"policy_hash":"b3:pol","price_table_version":"v1"},"output":{"text":"h\xc3\xa9"}}\n\n',
    b'id: 0\nevent: end\ndata: {"output":{"rows":[1,2]},"executor":"http",'
    b'"duration_ms":12}\n\n',
    b'id: 0\nevent: error\ndata: {"code":"CANCELLED","message":"step cancelled",'
    b'"retriable":false}\n\n',
    b'id: 0\nevent: error\ndata: {"code":"BUDGET_EXCEEDED","message":"budget",'
    b'"retriable":false,"retry_after_ms":100,"data":{"budget":"max_tokens_out",'
    b'"limit":2}}\n\n',
    # every Step type's terminal frames carry provenance (NERVE-4020)
    b'id: 0\nevent: end\ndata: {"output":{"rows":[1,2]},"executor":"http",'
    b'"duration_ms":12,"provenance":{"tokens_in":0,"tokens_out":0,"cost_usd":0.0,'
    b'"policy_hash":"b3:pol","price_table_version":"v1","executor":"http",'
    b'"input_hash":"b3:in","wall_ms":15}}\n\n',
    b'id: 0\nevent: error\ndata: {"code":"DEADLINE_EXCEEDED","message":"late",'
    b'"retriable":false,"data":{"budget":"max_wall_ms"},"provenance":{"tokens_in":0,'
    b'"tokens_out":0,"cost_usd":0.0,"policy_hash":"b3:pol","price_table_version":"v1",'
    b'"executor":"http","input_hash":"b3:in","wall_ms":15}}\n\n',
    b'id: 0\nevent: error\ndata: {"code":"CANCELLED","message":"step cancelled",'
    b'"retriable":false,"provenance":{"seed":7,"prompt_hash":"b3:p","params_hash":"b3:q",'
    b'"engine":"mock","engine_version":"1","engine_build":"mock-1","model_hash":"b3:m",'
    b'"pool_id":"default","replica_id":"default-0","tokens_in":5,"tokens_out":2,'
    b'"cost_usd":0.0,"decode_time_ms":3,"policy_hash":"b3:pol",'
    b'"price_table_version":"v1"}}\n\n',
]
_EPHEMERAL: list[EphemeralPayload] = [
    MetricsData(tokens_out=16, elapsed_ms=8, tokens_per_s=2000.0, tokens_in=5, cost_usd=0.25,
                reserved_tokens_out=64),
    NarrationData(text="thinking"),
]
_EPHEMERAL_BYTES = [
    b'event: metrics\ndata: {"tokens_out":16,"elapsed_ms":8,"tokens_per_s":2000.0,'
    b'"tokens_in":5,"cost_usd":0.25,"reserved_tokens_out":64}\n\n',
    b'event: narration\ndata: {"text":"thinking"}\n\n',
]


@pytest.fixture
def log(store: SqliteStore) -> EventLog:
    """An event log over the seeded store, with Step ``s`` open."""
    lg = EventLog(store, FakeClock(), Metrics(CollectorRegistry()), ephemeral_capacity=8)
    lg.open("s", "r")
    return lg


def _data(frame: bytes) -> bytes:
    """The ``data:`` line of one SSE frame."""
    return frame.split(b"\ndata: ", 1)[1][:-2]


def _event(frame: bytes) -> str:
    """The ``event:`` name of one SSE frame."""
    return frame.split(b"event: ", 1)[1].split(b"\n", 1)[0].decode()


class TestTheLogDerivesTheType:
    """``append``/``finish``/``publish_ephemeral`` take the payload alone."""

    def test_durable_frames_keep_the_recorded_bytes(self, log: EventLog,
                                                    store: SqliteStore) -> None:
        """Every non-terminal durable payload streams and stores the bytes it had when
        call sites paired type and encoded data by hand (STREAM-2000)."""
        for payload in _DURABLE:
            log.append("s", payload)
        log.finish("s", _TERMINAL[0], {"status": "succeeded"})
        assert log.read("s", -1) == ([*_DURABLE_BYTES, b"id: 9" + _TERMINAL_BYTES[0][5:]],
                                     True)
        log._live.clear()
        assert log.read("s", -1)[0] == [*_DURABLE_BYTES, b"id: 9" + _TERMINAL_BYTES[0][5:]]
        assert [t for _s, t, _d in store.read_events("s", -1)] == [
            "started", "started", "token", "token", "tool_suggest", "tool_suggest", "fact",
            "checkpoint", "escalation", "end"]

    @pytest.mark.parametrize("index", range(len(_TERMINAL)))
    def test_terminal_frames_keep_the_recorded_bytes(self, log: EventLog,
                                                     index: int) -> None:
        """``end`` (LLM and effect) and ``error`` payloads give the old bytes; the
        provenance of the other Step types and of failed Steps is appended after them
        [NERVE-4020]."""
        log.finish("s", _TERMINAL[index], {"status": "failed"})
        assert log.read("s", -1) == ([_TERMINAL_BYTES[index]], True)

    def test_ephemeral_frames_keep_the_recorded_bytes(self, log: EventLog) -> None:
        """``metrics`` and ``narration`` payloads give the old bytes (STREAM-2003)."""
        sub = log.subscribe("s")
        for payload in _EPHEMERAL:
            log.publish_ephemeral("s", payload)
        assert sub.drain_ephemeral() == _EPHEMERAL_BYTES

    def test_a_replay_copies_recorded_rows_verbatim(self, log: EventLog) -> None:
        """A recorded token frame from before ``b`` existed is copied byte for byte."""
        log.append_recorded("s", "token", b'{"i":0,"t":"a","id":1}')
        log.finish_recorded("s", "end", _data(_TERMINAL_BYTES[1]), {"status": "succeeded"})
        assert log.read("s", -1) == ([b'id: 0\nevent: token\ndata: {"i":0,"t":"a","id":1}\n\n',
                                      b"id: 1" + _TERMINAL_BYTES[1][5:]], True)


class TestDecoding:
    """Each frame's data decodes into its payload Struct and encodes back unchanged."""

    @pytest.mark.parametrize("frame", [*_DURABLE_BYTES, *_TERMINAL_BYTES, *_EPHEMERAL_BYTES])
    def test_every_frame_round_trips(self, frame: bytes) -> None:
        """Decoding by event name and re-encoding gives the same bytes, and the decoded
        payload names the frame's type."""
        payload = decode_frame_data(_event(frame), _data(frame))
        assert (frame_type_of(payload).value, msgspec.json.encode(payload)) == (
            _event(frame), _data(frame))

    def test_the_two_end_payloads_are_told_apart(self) -> None:
        """An LLM ``end`` decodes as EndData, a side effect's as EffectEndData, also when
        it carries provenance."""
        assert [decode_frame_data("end", _data(f)) for f in _TERMINAL_BYTES[:2]] == \
            _TERMINAL[:2]
        assert decode_frame_data("end", _data(_TERMINAL_BYTES[4])) == _TERMINAL[4]

    def test_a_token_recorded_without_bytes_decodes(self) -> None:
        """A token frame from before ``b`` existed has ``b`` None and re-encodes as it was."""
        tok = decode_frame_data("token", b'{"i":0,"t":"a","id":1}')
        assert (tok, msgspec.json.encode(tok)) == (TokenData(i=0, t="a", id=1),
                                                   b'{"i":0,"t":"a","id":1}')

    def test_every_frame_type_has_payloads_and_each_payload_one_type(self) -> None:
        """The vocabulary is closed: every FrameType maps to its Structs and back."""
        assert {ft: [c.__name__ for c in cs] for ft, cs in FRAME_PAYLOADS.items()} == {
            FrameType.STARTED: ["StartedData"], FrameType.TOKEN: ["TokenData"],
            FrameType.TOOL_SUGGEST: ["ToolSuggestData"], FrameType.FACT: ["Fact"],
            FrameType.CHECKPOINT: ["CheckpointData"],
            FrameType.ESCALATION: ["EscalationData"],
            FrameType.END: ["EffectEndData", "EndData"], FrameType.ERROR: ["ErrorData"],
            FrameType.METRICS: ["MetricsData"], FrameType.NARRATION: ["NarrationData"]}
        assert set(FRAME_PAYLOADS) == set(FrameType)


class TestClientFrames:
    """The Python client decodes each streamed frame into its payload Struct."""

    @pytest.mark.anyio
    async def test_the_client_yields_typed_frames(self) -> None:
        """Every frame of a stream arrives with its id, event, payload Struct and raw data;
        an event the client does not know keeps its JSON as UntypedData."""
        body = b"".join([b'event: newer\ndata: {"x":1}\n\n', _DURABLE_BYTES[0],
                         _DURABLE_BYTES[2], _DURABLE_BYTES[7], _EPHEMERAL_BYTES[1],
                         b"id: 4" + _TERMINAL_BYTES[0][5:]])

        def serve(request: httpx.Request) -> httpx.Response:
            assert request.url.path == "/v1/steps/stp_1/stream"
            return httpx.Response(200, content=body,
                                  headers={"content-type": "text/event-stream"})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            frames = [f async for f in oc.stream("stp_1")]
        assert [(f.id, f.event, f.data) for f in frames] == [
            (None, "newer", UntypedData({"x": 1})), (0, "started", _DURABLE[0]),
            (2, "token", _DURABLE[2]), (7, "checkpoint", _DURABLE[7]),
            (None, "narration", _EPHEMERAL[1]), (4, "end", _TERMINAL[0])]
        assert [f.raw.encode() for f in frames[1:5]] == [
            _data(_DURABLE_BYTES[0]), _data(_DURABLE_BYTES[2]), _data(_DURABLE_BYTES[7]),
            _data(_EPHEMERAL_BYTES[1])]
        assert (frames[2].seq, frames[2].json()) == (
            2, {"i": 0, "t": "h\u00e9", "id": 71, "b": "aMOp"})

    @pytest.mark.anyio
    async def test_keep_alive_comments_after_a_frame_with_an_id_yield_nothing(self) -> None:
        """A ``: keep-alive`` comment is no frame, also after a frame that set the last
        event id (an SSE parser may report it as an empty ``message`` event)."""
        body = b"".join([_DURABLE_BYTES[0], b": keep-alive\n\n", b": keep-alive\n\n",
                         _DURABLE_BYTES[2], b": keep-alive\n\n",
                         b"id: 4" + _TERMINAL_BYTES[0][5:]])

        def serve(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, content=body,
                                  headers={"content-type": "text/event-stream"})

        async with OrchestratorClient("http://o", transport=httpx.MockTransport(serve)) as oc:
            frames = [f async for f in oc.stream("stp_1")]
        assert [(f.id, f.event) for f in frames] == [(0, "started"), (2, "token"),
                                                     (4, "end")]

    def test_a_step_result_reads_text_bytes_ids_and_output_from_the_payloads(self) -> None:
        """``text``, ``data``, ``token_ids`` and ``output`` come from the typed payloads; a
        token recorded without ``b`` contributes the UTF-8 of its ``t``."""
        frames = [Frame.decode(0, "token", '{"i":0,"t":"h\u00e9","id":71,"b":"aMOp"}'),
                  Frame.decode(1, "token", '{"i":1,"t":"!","id":3}'),
                  Frame.decode(2, "end", _data(_TERMINAL_BYTES[1]).decode())]
        res = StepResult(step=None, frames=frames)  # type: ignore[arg-type]
        assert (res.text, res.data, res.token_ids, res.output) == (
            "h\u00e9!", b"h\xc3\xa9!", [71, 3], {"rows": [1, 2]})
