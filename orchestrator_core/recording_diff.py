"""The first place two recordings differ (REC-7020, specs/95_recordings.md).

Pure: it reads two checked :class:`~orchestrator_core.recordings.Recording` values and
nothing else, so the CLI (``orchestratord runs diff``), the pytest plugin and a page can
all use it.

Steps are matched by ``client_token`` in the first recording's submission order. For each
pair, in this order: a Step missing from the second, its ``type``, its ``input`` (the
dotted path of the first difference), its ``status``, then its frames. Frames are compared
one by one, ``started`` frames excepted (queue position and placement are where a Step
ran, not what it produced), and without the ``provenance`` of terminal frames (timings and
placement); a ``token`` frame is compared by index, id and exact bytes (DESIGN.md §2,
logprobs not compared).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from contracts.events import TokenData
from orchestrator_core.recordings import Recording, StepLine
from orchestrator_core.replay import first_difference, token_bytes

__all__ = ["CONTEXT_CHARS", "Divergence", "first_divergence"]

CONTEXT_CHARS = 80
"""How much text before a divergent token :attr:`Divergence.context` holds."""

_token = msgspec.json.Decoder(TokenData)


class Divergence(msgspec.Struct, frozen=True, omit_defaults=True):
    """Where two recordings first differ (REC-7020).

    Attributes:
        step: the ordinal of the Step in the first recording (in the second, for a Step
            only the second has).
        client_token: the Step's client_token.
        field: ``step`` (missing from one side), ``type``, ``input.<path>``, ``status``,
            ``frames`` (a frame missing on one side), ``frames[<seq>].type``,
            ``frames[<seq>].data.<path>`` or ``token``.
        expected: the first recording's value there (None when it has none).
        actual: the second's.
        frame: the seq of the differing frame, for a frame difference.
        index: the token index ``i``, for a token difference.
        context: the text of the tokens before a divergent token (its last
            :data:`CONTEXT_CHARS` characters).
    """

    step: int
    client_token: str
    field: str
    expected: Any
    actual: Any
    frame: int | None = None
    index: int | None = None
    context: str | None = None

    def describe(self) -> str:
        """One line for people: where, and what each side has."""
        at = f"step {self.step} ({self.client_token!r}), {self.field}"
        if self.index is not None:
            at += f", token index {self.index}"
        return f"{at}: expected {self.expected!r}, actual {self.actual!r}"


def _view(token: TokenData) -> dict[str, Any]:
    return {"t": token.t, "id": token.id,
            "b": base64.b64encode(token_bytes(token)).decode("ascii")}


def _compared(line: StepLine) -> list[tuple[int, str, Any]]:
    """The frames a diff compares: every frame but ``started``, terminal frames without
    their provenance; ``(seq, type, value)`` with token frames as :class:`TokenData`."""
    out: list[tuple[int, str, Any]] = []
    for seq, ftype, data in line.frames:
        if ftype == "started":
            continue
        if ftype == "token":
            out.append((seq, ftype, _token.decode(data)))
            continue
        value = msgspec.json.decode(data)
        if ftype in ("end", "error") and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "provenance"}
        out.append((seq, ftype, value))
    return out


def _frames(step: int, token: str, a: StepLine, b: StepLine) -> Divergence | None:
    text = ""
    fa, fb = _compared(a), _compared(b)
    for (seq, ta, va), (_, tb, vb) in zip(fa, fb, strict=False):
        if ta != tb:
            return Divergence(step, token, f"frames[{seq}].type", ta, tb, frame=seq)
        if ta == "token":
            if (va.i, va.id, token_bytes(va)) != (vb.i, vb.id, token_bytes(vb)):
                return Divergence(step, token, "token", _view(va), _view(vb), frame=seq,
                                  index=va.i, context=text[-CONTEXT_CHARS:])
            text += va.t
            continue
        path = first_difference(va, vb, f"frames[{seq}].data")
        if path is not None:
            return Divergence(step, token, path, va, vb, frame=seq)
    if len(fa) != len(fb):
        longer = fa if len(fa) > len(fb) else fb
        seq, ftype, _value = longer[min(len(fa), len(fb))]
        return Divergence(step, token, "frames", ftype if longer is fa else None,
                          ftype if longer is fb else None, frame=seq)
    return None


def first_divergence(a: Recording, b: Recording) -> Divergence | None:
    """The first difference between two recordings, or None when they agree [REC-7020].

    Args:
        a: the expected recording (e.g. the golden file, or the recorded Run).
        b: the actual one (e.g. a replay's export).

    Returns:
        The :class:`Divergence`, or None.
    """
    others = {line.step.client_token: line for line in b.steps}
    mine = {line.step.client_token for line in a.steps}
    for ordinal, line in enumerate(a.steps):
        s, token = line.step, line.step.client_token
        other = others.get(token)
        if other is None:
            return Divergence(ordinal, token, "step", token, None)
        o = other.step
        if s.type != o.type:
            return Divergence(ordinal, token, "type", s.type, o.type)
        if s.input_hash != o.input_hash:
            path = first_difference(s.input, o.input) or "input"
            return Divergence(ordinal, token, path, s.input, o.input)
        if s.status != o.status:
            return Divergence(ordinal, token, "status", s.status, o.status)
        found = _frames(ordinal, token, line, other)
        if found is not None:
            return found
    for ordinal, line in enumerate(b.steps):
        if line.step.client_token not in mine:
            return Divergence(ordinal, line.step.client_token, "step", None,
                              line.step.client_token)
    return None
