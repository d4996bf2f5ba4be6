"""The frames a Python client reads, as typed values (STREAM-2000, NERVE-4111).

:class:`Frame` is one SSE frame whose ``data`` is the payload Struct of its type from
:mod:`contracts.events` (``TokenData``, ``EndData``, ``ErrorEnvelope``, ...);
:class:`StepResult` is a finished Step with all its frames; :class:`SubmittedStream` and
:class:`SyncSubmittedStream` are a Step submitted with its stream, for
:class:`~orchestratord.client_async.AsyncClient` and :class:`~orchestratord.client_sync.Client`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec

from contracts.events import (
    EffectEndData,
    EndData,
    FramePayload,
    TokenData,
    ToolSuggestData,
    decode_frame_data,
)
from contracts.steps import Step

__all__ = ["Frame", "StepResult", "SubmittedStream", "SyncSubmittedStream", "UntypedData"]


class UntypedData(msgspec.Struct, frozen=True):
    """The data of a frame this client has no payload Struct for (an event name newer than
    the client, or a recorded payload that does not match its Struct): the decoded JSON."""

    value: Any


class Frame(msgspec.Struct, frozen=True):
    """One SSE frame as received (STREAM-2000).

    Attributes:
        id: the frame's sequence number in its Step (``id:``); None for ephemeral frames.
        event: the frame type (``event:``), a ``contracts.events.FrameType`` value.
        data: the payload Struct of that type (``contracts.events.FRAME_PAYLOADS``), or
            :class:`UntypedData` when there is none.
        raw: the ``data:`` line exactly as received (single-line JSON).
    """

    id: int | None
    event: str
    data: FramePayload | UntypedData
    raw: str

    @classmethod
    def decode(cls, seq: int | None, event: str, raw: str) -> Frame:
        """Build a frame from its SSE fields, decoding ``raw`` by ``event``.

        Raises:
            msgspec.DecodeError: ``raw`` is not JSON.
        """
        try:
            data: FramePayload | UntypedData = decode_frame_data(event, raw)
        except (KeyError, msgspec.ValidationError):
            data = UntypedData(msgspec.json.decode(raw))
        return cls(id=seq, event=event, data=data, raw=raw)

    @property
    def seq(self) -> int | None:
        """The sequence number (``id``); kept for callers written before :attr:`id`."""
        return self.id

    def json(self) -> Any:
        """The data as plain JSON values (dicts, lists, ...)."""
        return msgspec.json.decode(self.raw)


class StepResult(msgspec.Struct):
    """A Step and every frame of its stream, in order."""

    step: Step
    frames: list[Frame]

    @property
    def tokens(self) -> list[Frame]:
        """The ``token`` frames."""
        return [f for f in self.frames if f.event == "token"]

    @property
    def token_data(self) -> list[TokenData]:
        """The payloads of the ``token`` frames."""
        return [f.data for f in self.frames if isinstance(f.data, TokenData)]

    @property
    def terminal(self) -> Frame:
        """The ``end`` or ``error`` frame."""
        return self.frames[-1]

    @property
    def suggestions(self) -> list[Frame]:
        """The ``tool_suggest`` frames of an ``llm_plan`` (NERVE-4010)."""
        return [f for f in self.frames if f.event == "tool_suggest"]

    @property
    def suggestion_data(self) -> list[ToolSuggestData]:
        """The payloads of the ``tool_suggest`` frames."""
        return [f.data for f in self.frames if isinstance(f.data, ToolSuggestData)]

    @property
    def output(self) -> Any:
        """``end.output`` (``None`` when the Step ended with ``error``)."""
        data = self.terminal.data
        if isinstance(data, EndData | EffectEndData):
            return data.output
        return self.terminal.json()["output"] if self.terminal.event == "end" else None

    @property
    def text(self) -> str:
        """The generated text, concatenated from the token frames' ``t`` (valid text: a
        character split over several tokens is in the ``t`` of the token completing it)."""
        return "".join(tok.t for tok in self.token_data)

    @property
    def data(self) -> bytes:
        """The engine's exact output bytes: every token frame's ``b`` (base64) decoded and
        concatenated; a frame recorded before ``b`` existed gives the UTF-8 of its ``t``
        (STREAM-2006)."""
        out = bytearray()
        for tok in self.token_data:
            out += base64.b64decode(tok.b) if tok.b is not None else tok.t.encode()
        return bytes(out)

    @property
    def token_ids(self) -> list[int]:
        """The engine token id of each token frame."""
        return [tok.id for tok in self.token_data]


class SubmittedStream:
    """A Step submitted with ``Accept: text/event-stream``: its id, whether the request
    created it, and its frames as they arrive (STREAM-2010).

    Attributes:
        step_id: the Step's id (``X-Step-Id``).
        created: True for a 201 (a new Step), False for a 200 (the ``client_token``
            already named it).
    """

    def __init__(self, step_id: str, created: bool, frames: AsyncIterator[Frame]) -> None:
        self.step_id = step_id
        self.created = created
        self._frames = frames

    def frames(self) -> AsyncIterator[Frame]:
        """The Step's frames until its terminal frame (iterate once)."""
        return self._frames


class SyncSubmittedStream:
    """A Step submitted with ``Accept: text/event-stream`` by the sync
    :class:`~orchestratord.client_sync.Client`: as :class:`SubmittedStream`, with its
    frames as a plain iterator (NERVE-4110).

    Attributes:
        step_id: the Step's id (``X-Step-Id``).
        created: True for a 201 (a new Step), False for a 200.
    """

    def __init__(self, step_id: str, created: bool, frames: Iterator[Frame]) -> None:
        self.step_id = step_id
        self.created = created
        self._frames = frames

    def frames(self) -> Iterator[Frame]:
        """The Step's frames until its terminal frame (iterate once)."""
        return self._frames
