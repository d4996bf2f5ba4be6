"""The frame vocabulary: every stream frame's payload Struct, and its SSE framing
(STREAM-2000, STREAM-2001, NERVE-4020).

A frame is ``(seq, type, data)``. Durable frames (``started``, ``token``, ``tool_suggest``,
``fact``, ``checkpoint``, ``end``, ``error``, ``escalation``) are rows in the event log and
carry ``id: <seq>`` on the wire. Ephemeral frames (``metrics``, ``narration``) are not
stored and carry no ``id``.

Every payload is a msgspec Struct, and the Struct names its frame type:
:data:`FRAME_TYPE_OF` maps each payload class to its :class:`FrameType` (the event log
derives the type from the payload, so the two are never paired by hand), and
:data:`FRAME_PAYLOADS` maps each type back to the Structs its data decodes into
(``end`` has two: :class:`EndData` for LLM Steps, :class:`EffectEndData` for the others;
``error`` is :class:`ErrorData`, the error envelope with the Step's provenance).
The JSON of each Struct is exactly the stored and streamed ``data`` (field order, omitted
defaults), so stores written before this vocabulary read and replay unchanged.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import msgspec

from contracts.errors import ErrorEnvelope
from contracts.facts import Fact

__all__ = [
    "DURABLE_FRAMES",
    "FRAME_PAYLOADS",
    "FRAME_TYPE_OF",
    "TERMINAL_FRAMES",
    "BreakerState",
    "CheckpointData",
    "DurablePayload",
    "EffectEndData",
    "EndData",
    "EphemeralPayload",
    "ErrorData",
    "EscalationData",
    "FramePayload",
    "FrameType",
    "MetricsData",
    "NarrationData",
    "PlacementDecision",
    "Provenance",
    "StartedData",
    "TerminalPayload",
    "TokenData",
    "ToolSuggestData",
    "decode_frame_data",
    "frame_type_of",
    "sse_comment",
    "sse_frame",
]


class FrameType(enum.StrEnum):
    """Every SSE event name the server emits."""

    STARTED = "started"
    TOKEN = "token"  # noqa: S105 - an SSE event name, not a secret
    TOOL_SUGGEST = "tool_suggest"
    FACT = "fact"
    METRICS = "metrics"
    NARRATION = "narration"
    CHECKPOINT = "checkpoint"
    ESCALATION = "escalation"
    END = "end"
    ERROR = "error"


DURABLE_FRAMES = frozenset(
    {
        FrameType.STARTED, FrameType.TOKEN, FrameType.TOOL_SUGGEST, FrameType.FACT,
        FrameType.CHECKPOINT, FrameType.ESCALATION, FrameType.END, FrameType.ERROR,
    }
)
TERMINAL_FRAMES = frozenset({FrameType.END, FrameType.ERROR})


class PlacementDecision(msgspec.Struct, frozen=True):
    """Where a Step was placed and why (PLACE-5001)."""

    strategy: str
    pool_id: str
    replica_id: str
    reason: str


class StartedData(msgspec.Struct, frozen=True):
    """``started``: the Step left the queue; ``queue_position`` counts Steps ahead of it.

    ``redactions`` is how many policy redactions were applied to the prompt.
    """

    type: str
    queue_position: int
    predicted_start_ms: int
    placement: PlacementDecision | None = None
    redactions: int = 0


class TokenData(msgspec.Struct, frozen=True, array_like=False, omit_defaults=True):
    """``token``: one engine token (STREAM-2006).

    ``i`` is the index from 0, ``id`` the engine's token id, ``b`` the token's exact
    bytes in standard base64 (they may end inside a UTF-8 character), and ``t`` the text
    this token completes: the incremental UTF-8 decoding (invalid bytes become U+FFFD) of
    every token's bytes so far, minus the text of the tokens before it. ``t`` is ``""``
    for a token that ends inside a character, and holds that whole character for the
    token that completes it, so concatenating ``t`` gives valid text. Frames recorded
    before ``b`` existed lack it (``None``); their bytes are the UTF-8 of ``t``.
    """

    i: int
    t: str
    id: int
    b: str | None = None


class Provenance(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Determinism and usage record of one Step, carried by its terminal frame, ``end`` or
    ``error``, whatever its type (NERVE-4020, DESIGN.md §4).

    Units: tokens, USD, milliseconds. Which fields a block has depends on the Step type
    (``specs/20_stream_and_replay.md`` §4); a field that does not apply is absent:

    * ``llm_call`` / ``llm_plan``: ``seed`` .. ``replica_id`` (where and with what the
      Step ran), the usage, ``decode_time_ms`` and ``finish_reason`` (absent when the
      engine did not finish), ``policy_hash`` and ``price_table_version``. These are
      exactly the fields, in exactly the order, of the block before the other types had
      one, so an LLM ``end`` frame keeps its bytes.
    * ``tool_call``, ``fs_op``, ``gate_eval``, ``checkpoint``: the usage (no tokens, no
      cost), ``policy_hash``, ``price_table_version``, ``executor`` (the tool executor,
      ``fs``, ``gate`` or ``checkpoint``), ``input_hash`` (the Step's) and ``wall_ms``
      (submission to terminal frame).

    ``engine_build`` is the engine build fingerprint (library version, build flags, CPU
    features, server settings).

    What the engine was shown (NERVE-4090, NERVE-4091), on LLM Steps only, appended
    last so a block without them keeps its bytes:

    * ``rendered_hash``: ``b3:`` + hex blake3 of the UTF-8 bytes of the exact text sent to
      the engine, present whenever that text is not the Step's ``input.prompt`` byte for
      byte (``messages`` through the chat template, a plan's menu, a redaction); the
      text is kept under this hash and read with ``GET /v1/steps/{id}/prompt``. Absent,
      the engine saw ``input.prompt`` exactly.
    * ``template``: what rendered ``messages`` (``gguf``: the model file's own chat
      template; ``server:<dialect>``: the engine server's; ``mock``); absent otherwise.
    * ``fallback``: an ``llm_plan`` decoded under a looser constraint than its strict
      intents schema, which the caller allowed (NERVE-4094): ``envelope`` (the envelope
      only, arguments unconstrained) or ``unconstrained`` (no constraint at all).

    ``cached_from``: on the Step resource of an LLM Step served by the exact-match
    cache, the step_id of the earlier Step it was served from (REC-7103). Its frames are
    that Step's, by reference, so its ``end`` frame carries the source's block, without
    this field.
    """

    seed: int | None = None
    prompt_hash: str | None = None
    params_hash: str | None = None
    engine: str | None = None
    engine_version: str | None = None
    engine_build: str | None = None
    model_hash: str | None = None
    pool_id: str | None = None
    replica_id: str | None = None
    tokens_in: int
    tokens_out: int
    cost_usd: float
    decode_time_ms: int | None = None
    finish_reason: str | None = None
    policy_hash: str
    price_table_version: str
    executor: str | None = None
    input_hash: str | None = None
    wall_ms: int | None = None
    rendered_hash: str | None = None
    template: str | None = None
    fallback: str | None = None
    cached_from: str | None = None


class EndData(msgspec.Struct, frozen=True):
    """``end``: success; the provenance block and the Step's output."""

    provenance: Provenance
    output: dict[str, Any]


class ToolSuggestData(msgspec.Struct, frozen=True, omit_defaults=True):
    """``tool_suggest``: one intent of an ``llm_plan`` (NERVE-4010, NERVE-4011).

    ``i`` is the intent's index in the plan (from 0). ``valid`` is True only when
    ``tool`` is on the Step's menu and ``args`` validate against that tool's JSON Schema
    (2020-12); otherwise ``error`` says why, as a typed envelope (``INVALID_TOOL_ARGS``
    with ``data.reason`` ``not_on_menu`` or ``schema`` and ``data.errors``). An invalid
    suggestion is reported, never passed on as if valid.
    """

    i: int
    tool: str
    args: Any
    valid: bool
    error: ErrorEnvelope | None = None


class EffectEndData(msgspec.Struct, frozen=True, omit_defaults=True):
    """``end`` of a Step that is not an LLM call (``tool_call``, ``fs_op``, ``gate_eval``,
    ``checkpoint``): its recorded result and its provenance block (NERVE-4020).

    ``executor`` names the tool executor, ``fs``, ``gate`` or ``checkpoint``;
    ``duration_ms`` is the wall time of the work itself (ms). Frames recorded before these
    Steps had provenance lack ``provenance``. Replays serve this frame from the recording;
    a side effect never runs again.
    """

    output: Any
    executor: str
    duration_ms: int
    provenance: Provenance | None = None


class ErrorData(ErrorEnvelope, omit_defaults=True):
    """``error``: the flat error envelope plus the Step's provenance block (NERVE-4020):
    what the Step had consumed and, for an LLM Step, where it ran. Frames recorded before
    failed Steps had provenance lack ``provenance``, and keep their bytes."""

    provenance: Provenance | None = None


class MetricsData(msgspec.Struct, frozen=True):
    """``metrics`` (ephemeral): progress and budget usage; may be dropped for a slow reader.

    Units: tokens, ms, tokens/s, USD. ``reserved_tokens_out`` is the output the Step's
    budget reservation allows.
    """

    tokens_out: int
    elapsed_ms: int
    tokens_per_s: float
    tokens_in: int = 0
    cost_usd: float = 0.0
    reserved_tokens_out: int | None = None


class NarrationData(msgspec.Struct, frozen=True):
    """``narration`` (ephemeral): a human-readable note passed through verbatim."""

    text: str


class CheckpointData(msgspec.Struct, frozen=True):
    """``checkpoint``: the checkpoint a ``checkpoint`` Step stored (NERVE-4005).

    ``hash`` is the checkpoint's content address (blake3 hex) and ``checkpoint_id`` is
    ``ckp_`` + its prefix.
    """

    checkpoint_id: str
    hash: str


class BreakerState(enum.StrEnum):
    """The three circuit-breaker states (POLICY-3002)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class EscalationData(msgspec.Struct, frozen=True):
    """``escalation``: a circuit breaker moved (POLICY-3002): which breaker (``kind``,
    ``target``, e.g. a replica_id or a tool executor), from where to where, after how many
    consecutive ``failures``, and why."""

    kind: str
    target: str
    from_state: BreakerState
    to_state: BreakerState
    failures: int
    reason: str


DurablePayload = (StartedData | TokenData | ToolSuggestData | Fact | CheckpointData
                  | EscalationData)
"""Payloads of the non-terminal durable frames (``EventLog.append``)."""
TerminalPayload = EndData | EffectEndData | ErrorData
"""Payloads of the terminal frames ``end`` and ``error`` (``EventLog.finish``)."""
EphemeralPayload = MetricsData | NarrationData
"""Payloads of the ephemeral frames (``EventLog.publish_ephemeral``)."""
FramePayload = DurablePayload | TerminalPayload | EphemeralPayload
"""The data of any frame."""

FRAME_PAYLOADS: Final[dict[FrameType, tuple[type[msgspec.Struct], ...]]] = {
    FrameType.STARTED: (StartedData,),
    FrameType.TOKEN: (TokenData,),
    FrameType.TOOL_SUGGEST: (ToolSuggestData,),
    FrameType.FACT: (Fact,),
    FrameType.CHECKPOINT: (CheckpointData,),
    FrameType.ESCALATION: (EscalationData,),
    FrameType.END: (EffectEndData, EndData),
    FrameType.ERROR: (ErrorData,),
    FrameType.METRICS: (MetricsData,),
    FrameType.NARRATION: (NarrationData,),
}
"""Each frame type and the payload Structs its data decodes into, most specific first
(an ``end`` with ``executor`` and ``duration_ms`` is an :class:`EffectEndData`)."""

FRAME_TYPE_OF: Final[dict[type[msgspec.Struct], FrameType]] = {
    cls: ftype for ftype, classes in FRAME_PAYLOADS.items() for cls in classes}
"""Each payload Struct and the frame type it is sent as (one type per Struct)."""

_DECODERS: dict[str, tuple[msgspec.json.Decoder[Any], ...]] = {
    ftype.value: tuple(msgspec.json.Decoder(cls) for cls in classes)
    for ftype, classes in FRAME_PAYLOADS.items()}


def frame_type_of(payload: FramePayload) -> FrameType:
    """The frame type a payload is sent as (STREAM-2001).

    Raises:
        KeyError: ``payload`` is not a frame payload Struct.
    """
    return FRAME_TYPE_OF[type(payload)]


def decode_frame_data(event: str, data: bytes | str) -> FramePayload:
    """Decode a frame's ``data`` into the payload Struct of its ``event`` (STREAM-2000).

    ``end`` is tried as :class:`EffectEndData` (it needs ``executor`` and ``duration_ms``,
    which an LLM ``end`` never has), then as :class:`EndData` (LLM Steps).

    Raises:
        KeyError: ``event`` is not a :class:`FrameType`.
        msgspec.DecodeError: ``data`` is not JSON, or matches none of the event's Structs.
    """
    decoders = _DECODERS[event]
    for dec in decoders[:-1]:
        try:
            return dec.decode(data)  # type: ignore[no-any-return]
        except msgspec.ValidationError:
            continue
    return decoders[-1].decode(data)  # type: ignore[no-any-return]


_HEADS: dict[str, bytes] = {t.value: b"\nevent: " + t.value.encode() + b"\ndata: "
                            for t in FrameType}


def sse_frame(seq: int | None, event: str, data: bytes) -> bytes:
    """Frame one SSE event. ``data`` is single-line JSON; ``seq=None`` omits ``id:``.

    The ``event:`` line of every :class:`FrameType` is prebuilt: this runs once per
    streamed frame (STREAM-2000).

    Returns:
        ``id: <seq>\\nevent: <event>\\ndata: <data>\\n\\n`` as UTF-8 bytes.
    """
    head = _HEADS.get(event)
    if head is None:
        head = b"\nevent: " + event.encode() + b"\ndata: "
    if seq is None:
        return b"".join((head[1:], data, b"\n\n"))
    return b"".join((b"id: ", b"%d" % seq, head, data, b"\n\n"))


def sse_comment(text: str) -> bytes:
    """An SSE comment line, used for ``: keep-alive`` heartbeats."""
    return b": " + text.encode() + b"\n\n"
