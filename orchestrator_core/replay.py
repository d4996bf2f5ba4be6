"""Replay rules: matching a Step to its recording, determinism inputs, token verification.

* A replayed Step is matched to the recorded Step by ``client_token`` and checked against
  the recording's type and input hash; a mismatch is ``NONDETERMINISM`` (NERVE-4023).
* Before ``strict_replay`` starts, the determinism inputs are compared with the recorded
  provenance; any difference is ``DETERMINISM_INPUTS_DIFFER`` listing every differing
  field (NERVE-4022).
* During ``strict_replay`` every token is compared with the recording: text bytes, token
  id and index. The first difference is ``REPLAY_DIVERGED`` (NERVE-4021).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from contracts.errors import DeterminismInputsDiffer, Nondeterminism, ReplayDiverged
from contracts.events import Provenance, TokenData

__all__ = [
    "DETERMINISM_FIELDS",
    "TokenVerifier",
    "check_determinism_inputs",
    "check_recorded_match",
    "first_difference",
]

DETERMINISM_FIELDS = (
    "prompt_hash", "params_hash", "seed", "engine", "engine_version", "engine_build",
    "model_hash", "replica_id", "policy_hash",
)

_token_decoder = msgspec.json.Decoder(TokenData)


def first_difference(recorded: Any, submitted: Any, path: str = "input") -> str | None:
    """Dotted path of the first place two JSON values differ, or None when equal."""
    if isinstance(recorded, Mapping) and isinstance(submitted, Mapping):
        for key in sorted(set(recorded) | set(submitted)):
            sub = first_difference(recorded.get(key), submitted.get(key), f"{path}.{key}")
            if sub is not None:
                return sub
        return None
    if isinstance(recorded, list) and isinstance(submitted, list):
        if len(recorded) != len(submitted):
            return f"{path}[len]"
        for i, (a, b) in enumerate(zip(recorded, submitted, strict=True)):
            sub = first_difference(a, b, f"{path}[{i}]")
            if sub is not None:
                return sub
        return None
    return None if recorded == submitted else path


def check_recorded_match(*, client_token: str, recorded: Mapping[str, Any] | None,
                         step_type: str, input_hash: str, input_value: Any) -> None:
    """Raise ``NONDETERMINISM`` unless the recorded Step has this type and input hash.

    Args:
        recorded: the recorded Step row (``type``, ``input_hash``, ``input`` JSON text).
    """
    if recorded is None:
        raise Nondeterminism(
            f"the recording has no step with client_token {client_token!r}",
            data={"client_token": client_token, "field": "client_token",
                  "recorded_hash": None, "submitted_hash": input_hash})
    if recorded["type"] != step_type:
        raise Nondeterminism(
            f"step {client_token!r} was recorded as {recorded['type']}, not {step_type}",
            data={"client_token": client_token, "field": "type",
                  "recorded_hash": recorded["input_hash"], "submitted_hash": input_hash})
    if recorded["input_hash"] != input_hash:
        field = first_difference(msgspec.json.decode(recorded["input"]), input_value)
        raise Nondeterminism(
            f"step {client_token!r} input differs from the recording at {field}",
            data={"client_token": client_token, "field": field,
                  "recorded_hash": recorded["input_hash"], "submitted_hash": input_hash})


def check_determinism_inputs(recorded: Provenance, current: Mapping[str, Any]) -> None:
    """Compare every determinism input; raise listing all differing fields.

    Raises:
        DeterminismInputsDiffer: ``fields`` maps each differing name to
            ``{"recorded": ..., "current": ...}``.
    """
    diff: dict[str, dict[str, Any]] = {}
    for name in DETERMINISM_FIELDS:
        rec = getattr(recorded, name)
        cur = current.get(name)
        if rec != cur:
            diff[name] = {"recorded": rec, "current": cur}
    if diff:
        raise DeterminismInputsDiffer(
            "strict_replay refused: determinism inputs differ: " + ", ".join(sorted(diff)),
            fields=diff)


class TokenVerifier:
    """Compares a live token stream with the recorded ``token`` frames, one by one.

    Args:
        recorded_tokens: the recorded ``token`` frame data (JSON bytes), in order.
        run_id / step_id: carried on the divergence error.
    """

    def __init__(self, recorded_tokens: list[bytes], *, run_id: str, step_id: str) -> None:
        self.expected = [_token_decoder.decode(b) for b in recorded_tokens]
        self.run_id = run_id
        self.step_id = step_id

    def _diverged(self, index: int, expected: TokenData | None,
                  actual: TokenData | None) -> ReplayDiverged:
        def view(t: TokenData | None) -> dict[str, Any] | None:
            return None if t is None else {"t": t.t, "id": t.id}
        return ReplayDiverged(run_id=self.run_id, step_id=self.step_id, index=index,
                              expected=view(expected), actual=view(actual))

    def check(self, actual: TokenData) -> None:
        """Raise ``REPLAY_DIVERGED`` unless ``actual`` equals the recorded token at its index."""
        i = actual.i
        exp = self.expected[i] if i < len(self.expected) else None
        if exp is None or exp.t.encode() != actual.t.encode() or exp.id != actual.id:
            raise self._diverged(i, exp, actual)

    def finish(self, produced: int) -> None:
        """Raise ``REPLAY_DIVERGED`` when the live stream ended before the recording did."""
        if produced < len(self.expected):
            raise self._diverged(produced, self.expected[produced], None)
