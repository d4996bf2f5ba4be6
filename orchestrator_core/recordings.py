"""The portable recording format ``orchestratord.recording/1.1``: its lines and their
checks (REC-7000..REC-7009, REC-7111, REC-7112, specs/95_recordings.md).

A recording is JSON Lines. Every line is the RFC 8785 canonical JSON of one object with
a ``kind`` and a ``hash``, ``b3:`` + hex(blake3) of the canonical JSON of the same object
without ``hash``, followed by ``\\n``; so each line verifies itself, and a flipped byte
is refused naming its line. The lines come in this order:

1. ``header``: the format, the exporting server's version, the Run's determinism inputs
   (mode, seed, policy hash, its body with budgets and policy, the engines and build
   settings its Steps ran on, the price table versions);
2. ``flow``: the Flow's content ``{ast_ir, tools, config}`` and its content address;
3. one ``step`` per Step, in submission order: its row, every durable frame as
   ``[seq, type, data]`` with ``data`` the stored JSON text exactly, and ``frames_hash``
   (the blake3 of the SSE bytes the frames make, NERVE-4025); a Step served by reference
   carries the frames it names. Recorded effects (``tool_call`` and ``fs_op`` results)
   are the ``end`` frames of their Steps. Since ``/1.1`` an LLM Step whose provenance
   has a ``rendered_hash`` carries ``rendered``, the text kept under it (NERVE-4091);
4. one ``fact`` per Fact in append order, one ``checkpoint`` per checkpoint;
5. ``trailer``: the counts and ``root_hash``, the blake3 of every preceding line's
   bytes, newlines included.

:class:`RecordingReader` checks a file line by line; this module touches no store and no
HTTP (export and import are :mod:`orchestrator_core.recording_io`).
"""

from __future__ import annotations

from typing import Annotated, Any

import blake3
import msgspec

from contracts.canonical import canonical_json
from contracts.errors import InvalidParams
from orchestrator_core.canonical import b3, b3_bytes, b3_legacy
from orchestrator_core.replay import frames_hash

__all__ = [
    "FORMAT",
    "FORMATS",
    "FORMAT_1",
    "MAX_LINE_BYTES",
    "MAX_RECORDING_BYTES",
    "CheckpointLine",
    "FactLine",
    "FlowLine",
    "HeaderLine",
    "Recording",
    "RecordingReader",
    "RunInputs",
    "StepLine",
    "StepRecord",
    "TrailerLine",
    "encode_line",
    "encode_recording",
    "read_recording",
]

FORMAT = "orchestratord.recording/1.1"
"""The format version an export names (REC-7001, REC-7111)."""
FORMAT_1 = "orchestratord.recording/1"
"""The first version: no ``rendered`` texts; still read (REC-7111)."""
FORMATS = (FORMAT_1, FORMAT)
"""The versions a reader accepts; it refuses any other (REC-7001, REC-7111)."""
MAX_LINE_BYTES = 16 << 20
"""The longest line a reader accepts, newline excluded (16 MiB; REC-7008)."""
MAX_RECORDING_BYTES = 256 << 20
"""The largest recording ``POST /v1/recordings`` accepts (256 MiB; REC-7008)."""

Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A count, seq, seed or usage: what SQLite stores as a signed 64-bit integer."""
MAX_DEPTH = 80
"""The deepest nesting of arrays and objects a line may have (REC-7008): a request
body's limit (``max_json_depth``, 64 by default) and the line's own levels."""

Frame = tuple[Count, str, str]
"""``(seq, type, data)``: a durable frame, ``data`` the stored JSON text exactly."""


class RunInputs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The recorded Run and its determinism inputs (REC-7001).

    Attributes:
        run_id: its id on the exporting server (informative; an import gets a new one).
        mode: ``record``, ``replay`` or ``strict_replay``.
        seed: the Run seed.
        replay_of: the recording a replay Run served, on the exporting server.
        policy_hash: ``b3:`` hash of its policy.
        body: ``{budgets, policy, pool_policy, fs_policy, labels, cancel_on_disconnect}``.
        status: ``active`` or ``cancelled``.
        created_at: ISO 8601 UTC, as recorded.
    """

    run_id: str
    mode: str
    seed: Count
    replay_of: str | None
    policy_hash: str
    body: dict[str, Any]
    status: str
    created_at: str


class HeaderLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="header",
                 tag_field="kind"):
    """Line 1 (REC-7001). ``engines`` lists each distinct engine identity of the Steps'
    provenance (``engine``, ``engine_version``, ``engine_build``, ``model_hash``);
    ``engine_builds`` maps each build fingerprint to its recorded settings;
    ``price_table_versions`` the price tables the Steps were costed with."""

    format: str
    server_version: str
    run: RunInputs
    engines: list[dict[str, str | None]]
    engine_builds: dict[str, Any]
    price_table_versions: list[str]
    hash: str = ""


class FlowLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="flow",
               tag_field="kind"):
    """Line 2 (REC-7002): ``content`` is ``{ast_ir, tools, config}``, ``flow_hash`` its
    ``b3:`` content address, ``flow_id`` its id on the exporting server."""

    flow_id: str
    flow_hash: str
    content: dict[str, Any]
    labels: dict[str, str] | None
    created_at: str
    hash: str = ""


class StepRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A recorded Step's row (REC-7003): the columns of
    :class:`orchestrator_core.rows.StepRow` that describe what it was, with its JSON
    columns as JSON values; ``step_id`` is its id on the exporting server."""

    step_id: str
    ordinal: Count
    type: str
    client_token: str
    input: Any
    input_hash: str
    placement: Any
    status: str
    seed: Count | None
    created_at: str
    tokens_in: Count
    tokens_out: Count
    cost_usd: float
    wall_ms: Count
    provenance: Any
    error: Any


class StepLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="step",
               tag_field="kind", omit_defaults=True):
    """One Step with its frames and their content hash (REC-7003); ``rendered`` is the
    exact text its engine was sent when its provenance names one by ``rendered_hash``
    (``/1.1``, REC-7112), absent otherwise (so a ``/1`` line reads and hashes as it
    did)."""

    step: StepRecord
    frames: list[Frame]
    frames_hash: str
    rendered: str | None = None
    hash: str = ""


class FactLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="fact",
               tag_field="kind"):
    """One Fact (REC-7004): ``emitted_by_step`` is a recorded step_id."""

    fact_id: str
    seq: Count
    type: str
    schema_uri: str
    data: Any
    emitted_by_step: str | None
    ts: str
    hash: str = ""


class CheckpointLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True,
                     tag="checkpoint", tag_field="kind"):
    """One checkpoint (REC-7004): its content address, snapshot and cursor as stored."""

    checkpoint_id: str
    step_id: str | None
    checkpoint_hash: str
    snapshot: Any
    cursor: Any
    ts: str
    hash: str = ""


class TrailerLine(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="trailer",
                  tag_field="kind"):
    """The last line (REC-7005): how many Steps, frames, Facts and checkpoints the file
    holds, and ``root_hash``, the blake3 of the bytes of every line before it."""

    steps: Count
    frames: Count
    facts: Count
    checkpoints: Count
    root_hash: str
    hash: str = ""


AnyLine = HeaderLine | FlowLine | StepLine | FactLine | CheckpointLine | TrailerLine
_line_decoder = msgspec.json.Decoder(AnyLine)
_ORDER: dict[type[msgspec.Struct], int] = {HeaderLine: 0, FlowLine: 1, StepLine: 2,
                                           FactLine: 3, CheckpointLine: 4, TrailerLine: 5}
_KIND: dict[type[msgspec.Struct], str] = {
    HeaderLine: "header", FlowLine: "flow", StepLine: "step", FactLine: "fact",
    CheckpointLine: "checkpoint", TrailerLine: "trailer"}


def encode_line(line: AnyLine) -> bytes:
    """One line of a recording, ``\\n`` included [REC-7000].

    Args:
        line: the line's Struct (its ``hash`` is ignored and recomputed).

    Returns:
        The canonical JSON of the line with ``hash`` set to the ``b3:`` hash of its
        canonical JSON without ``hash``, then ``\\n``.
    """
    value = msgspec.to_builtins(line)
    value.pop("hash", None)
    value["hash"] = b3_bytes(canonical_json(value))
    return canonical_json(value) + b"\n"


class Recording(msgspec.Struct):
    """A whole recording, checked (:class:`RecordingReader`)."""

    header: HeaderLine
    flow: FlowLine
    steps: list[StepLine]
    facts: list[FactLine]
    checkpoints: list[CheckpointLine]
    trailer: TrailerLine


def _refuse(line: int, field: str, reason: str, message: str,
            **extra: Any) -> InvalidParams:
    return InvalidParams(f"recording line {line}: {message}",
                         data={"line": line, "field": field, "reason": reason, **extra})


class RecordingReader:
    """Checks a recording one line at a time and collects it [REC-7006].

    Feed every line (without its newline) to :meth:`feed`, then call :meth:`finish`.
    Nothing is stored: the caller stores the :class:`Recording` only once it is whole.
    """

    def __init__(self) -> None:
        self.line = 0
        self._root = blake3.blake3()
        self._kinds = -1
        self._parts: dict[str, Any] = {"steps": [], "facts": [], "checkpoints": []}
        self._frames = 0

    def feed(self, raw: bytes) -> None:
        """Check the next line.

        Raises:
            InvalidParams: ``data = {"line": n, "field": ..., "reason": ...}`` with reason
                ``too_long``, ``malformed`` (not a line of the format), ``not_canonical``,
                ``line_hash``, ``order``, ``format``, ``flow_hash``, ``frames``,
                ``frames_hash``, ``counts``, ``root_hash`` or ``after_trailer``.
        """
        self.line += 1
        n = self.line
        if len(raw) > MAX_LINE_BYTES:
            raise _refuse(n, "line", "too_long", f"longer than {MAX_LINE_BYTES} bytes",
                          max_line_bytes=MAX_LINE_BYTES)
        if self._kinds == _ORDER[TrailerLine]:
            raise _refuse(n, "line", "after_trailer", "a line after the trailer")
        try:
            parsed = _line_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _refuse(n, _field_of(str(exc)), "malformed", str(exc)) from None
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _depth(parsed) > MAX_DEPTH:
            raise _refuse(n, "line", "too_deep", f"nested deeper than {MAX_DEPTH} levels",
                          max_depth=MAX_DEPTH)
        value = msgspec.to_builtins(parsed)
        claimed = value.pop("hash", "")
        try:
            body = canonical_json(value)
        except InvalidParams:
            raise _refuse(n, "line", "malformed", "a number has no canonical form") from None
        if canonical_json({**value, "hash": claimed}) != raw:
            raise _refuse(n, "line", "not_canonical",
                          "the line is not the canonical JSON of its value")
        if b3_bytes(body) != claimed:
            raise _refuse(n, "hash", "line_hash", "the line does not match its hash")
        rank = _ORDER[type(parsed)]
        if rank != self._kinds + 1 if self._kinds < 1 else rank < max(self._kinds, 2):
            raise _refuse(n, "kind", "order",
                          f"a {_KIND[type(parsed)]} line cannot come here")
        self._kinds = rank
        self._check(n, parsed)
        if not isinstance(parsed, TrailerLine):
            self._root.update(raw + b"\n")

    def _check(self, n: int, parsed: AnyLine) -> None:
        match parsed:
            case HeaderLine():
                if parsed.format not in FORMATS:
                    raise _refuse(n, "format", "format", f"format {parsed.format[:64]!r} is "
                                  f"not {FORMAT}", supported=FORMAT)
                self._parts["header"] = parsed
            case FlowLine():
                content = parsed.content
                if set(content) != {"ast_ir", "tools", "config"} or parsed.flow_hash not in (
                        b3(content), b3_legacy(content)):
                    raise _refuse(n, "flow_hash", "flow_hash",
                                  "the flow's content does not match its hash")
                self._parts["flow"] = parsed
            case StepLine():
                self._check_step(n, parsed)
                self._parts["steps"].append(parsed)
                self._frames += len(parsed.frames)
            case FactLine():
                self._parts["facts"].append(parsed)
            case CheckpointLine():
                self._parts["checkpoints"].append(parsed)
            case TrailerLine():
                counts = (len(self._parts["steps"]), self._frames,
                          len(self._parts["facts"]), len(self._parts["checkpoints"]))
                if (parsed.steps, parsed.frames, parsed.facts, parsed.checkpoints) != counts:
                    raise _refuse(n, "counts", "counts", "the counts differ from the lines",
                                  counts=dict(zip(("steps", "frames", "facts", "checkpoints"),
                                                  counts, strict=True)))
                if parsed.root_hash != "b3:" + self._root.hexdigest():
                    raise _refuse(n, "root_hash", "root_hash",
                                  "the lines before the trailer do not match its root hash")
                self._parts["trailer"] = parsed

    def _check_step(self, n: int, parsed: StepLine) -> None:
        """The Step's frames are numbered 0, 1, ..., end with its terminal frame, and
        hash to ``frames_hash`` (REC-7003)."""
        frames = parsed.frames
        if [f[0] for f in frames] != list(range(len(frames))) or not frames or \
                frames[-1][1] not in ("end", "error"):
            raise _refuse(n, "frames", "frames", "frames must be numbered from 0 and end "
                          "with the step's terminal frame")
        if parsed.step.ordinal != len(self._parts["steps"]):
            raise _refuse(n, "step.ordinal", "order", "steps must come in submission order")
        actual = frames_hash((s, t, d.encode()) for s, t, d in frames)
        if actual != parsed.frames_hash:
            raise _refuse(n, "frames_hash", "frames_hash",
                          "the frames do not match their content hash",
                          frames_hash=parsed.frames_hash, actual=actual)
        if parsed.rendered is not None:
            self._check_rendered(n, parsed)

    def _check_rendered(self, n: int, parsed: StepLine) -> None:
        """A ``rendered`` text is a ``/1.1`` member and hashes to the ``rendered_hash``
        of the Step's provenance (REC-7112)."""
        if self._parts["header"].format == FORMAT_1:
            raise _refuse(n, "rendered", "format", f"a {FORMAT_1} step line has no rendered "
                          "text", supported=FORMAT)
        prov = parsed.step.provenance
        named = prov.get("rendered_hash") if isinstance(prov, dict) else None
        assert parsed.rendered is not None
        actual = b3_bytes(parsed.rendered.encode("utf-8"))
        if named != actual:
            raise _refuse(n, "rendered", "rendered_hash", "the rendered text does not match "
                          "the rendered_hash of the step's provenance", actual=actual)

    def finish(self) -> Recording:
        """The recording, once the trailer was read.

        Raises:
            InvalidParams: the file ended before its trailer (``reason`` ``truncated``,
                ``line`` the first missing one).
        """
        if "trailer" not in self._parts:
            raise _refuse(self.line + 1, "trailer", "truncated",
                          "the recording ends before its trailer")
        return Recording(**self._parts)


def _depth(line: AnyLine) -> int:
    """The deepest nesting of the line's JSON values (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(msgspec.to_builtins(line), 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _field_of(message: str) -> str:
    """The field a msgspec error message names (``... - at `$.step.seed```), or ``line``."""
    at = message.rfind("at `$.")
    return message[at + 6:message.find("`", at + 6)] if at >= 0 else "line"


def read_recording(data: bytes) -> Recording:
    """Check a whole recording held in memory [REC-7006].

    Args:
        data: the file's bytes.

    Raises:
        InvalidParams: see :meth:`RecordingReader.feed` and :meth:`RecordingReader.finish`.
    """
    reader = RecordingReader()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for raw in lines:
        reader.feed(raw)
    return reader.finish()


def encode_recording(rec: Recording) -> bytes:
    """A recording's bytes from its lines [REC-7005]: each line re-encoded with its hash,
    and the trailer's counts and root hash computed from them (a tool that edits a
    recording, e.g. to force a divergence in a test, writes it back with this).

    Args:
        rec: the lines; the trailer's values are ignored.
    """
    lines: list[AnyLine] = [rec.header, rec.flow, *rec.steps, *rec.facts, *rec.checkpoints]
    body = b"".join(encode_line(line) for line in lines)
    return body + encode_line(TrailerLine(
        steps=len(rec.steps), frames=sum(len(s.frames) for s in rec.steps),
        facts=len(rec.facts), checkpoints=len(rec.checkpoints),
        root_hash="b3:" + blake3.blake3(body).hexdigest()))
