"""Replay rules: matching a Step to its recording, determinism inputs, token verification.

* A replayed Step is matched to the recorded Step by ``client_token`` and checked against
  the recording's type and input hash; a mismatch is ``NONDETERMINISM`` (NERVE-4023).
* Before ``strict_replay`` starts, the determinism inputs are compared with the recorded
  provenance; any difference is ``DETERMINISM_INPUTS_DIFFER`` listing every differing
  field (NERVE-4022), the text the engine is shown (``rendered_hash``, so a changed chat
  template) among them (NERVE-4093).
* During ``strict_replay`` every token is compared with the recording: the token's exact
  bytes, its id and its index. The first difference is ``REPLAY_DIVERGED`` naming the
  index (NERVE-4021, STREAM-2006).
* A recording served by reference is named by the content hash of its frames, the
  blake3 of the stream body they make (NERVE-4025).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

import blake3
import msgspec

from contracts.errors import DeterminismInputsDiffer, Nondeterminism, ReplayDiverged
from contracts.events import Provenance, TokenData, sse_frame
from contracts.steps import SamplingParams
from orchestrator_core.canonical import b3_as_recorded
from orchestrator_core.rows import EventRead, StepRow

__all__ = [
    "DETERMINISM_FIELDS",
    "TokenVerifier",
    "check_determinism_inputs",
    "check_recorded_match",
    "first_difference",
    "flat_diff",
    "frames_hash",
    "recorded_params",
    "same_build",
    "token_bytes",
]

DETERMINISM_FIELDS = (
    "prompt_hash", "params_hash", "seed", "engine", "engine_version", "engine_build",
    "model_hash", "replica_id", "policy_hash", "rendered_hash",
)

_RECORDED_SINCE = frozenset({"rendered_hash"})
"""Inputs a recording may predate: compared only when the recording has them
(``rendered_hash``, NERVE-4093)."""

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


def check_recorded_match(*, client_token: str, recorded: StepRow | None,
                         step_type: str, input_hash: str, input_value: Any) -> None:
    """Raise ``NONDETERMINISM`` unless the recorded Step has this type and input hash
    (NERVE-4023).

    Args:
        client_token: the submitted Step's idempotency key.
        recorded: the recorded Step row (its ``type``, ``input_hash`` and ``input``
            JSON text are compared), or None when the recording has no such Step.
        step_type: the submitted type.
        input_hash: the submitted ``b3:<hex>`` of ``{type, input}``.
        input_value: the submitted input as builtins.

    Raises:
        Nondeterminism: no recorded Step, another type, or another input; ``data.field``
            is ``client_token``, ``type`` or the dotted path of the first difference.
    """
    if recorded is None:
        raise Nondeterminism(
            f"the recording has no step with client_token {client_token!r}",
            data={"client_token": client_token, "field": "client_token",
                  "recorded_hash": None, "submitted_hash": input_hash})
    if recorded.type != step_type:
        raise Nondeterminism(
            f"step {client_token!r} was recorded as {recorded.type}, not {step_type}",
            data={"client_token": client_token, "field": "type",
                  "recorded_hash": recorded.input_hash, "submitted_hash": input_hash})
    if recorded.input_hash != b3_as_recorded({"type": step_type, "input": input_value},
                                             input_hash, recorded.input_hash):
        field = first_difference(msgspec.json.decode(recorded.input), input_value)
        raise Nondeterminism(
            f"step {client_token!r} input differs from the recording at {field}",
            data={"client_token": client_token, "field": field,
                  "recorded_hash": recorded.input_hash, "submitted_hash": input_hash})


def same_build(recorded: Provenance, recorded_settings: str | None, *, engine: str,
               version: str, fingerprint: str, settings: Mapping[str, Any]) -> str:
    """The current build fingerprint in the form the recording used (NERVE-4048).

    A fingerprint hashes the engine's name, version and settings, so when those equal
    the recorded ones the build is the recorded build, whichever canonical form its
    fingerprint was hashed in (a recording made before RFC 8785 keeps its own).

    Args:
        recorded: the recorded provenance.
        recorded_settings: the settings JSON the store holds for the recorded
            fingerprint, or None.
        engine, version, fingerprint, settings: the current engine identity.

    Returns:
        ``recorded.engine_build`` when it names the same build, else ``fingerprint``.
    """
    if recorded.engine_build == fingerprint or recorded_settings is None:
        return fingerprint
    same = (recorded.engine == engine and recorded.engine_version == version
            and msgspec.json.decode(recorded_settings) == dict(settings))
    return recorded.engine_build if same and recorded.engine_build else fingerprint


def flat_diff(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
              prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every key whose value differs between two JSON objects, nested objects flattened
    to dotted names (``env.GGML_SCHED_MAX_COPIES``), each ``{"recorded", "current"}``;
    a key missing on one side has the value ``None`` there (a missing object counts as
    an empty one)."""
    out: dict[str, dict[str, Any]] = {}
    rec, cur = recorded or {}, current or {}
    for key in sorted(set(rec) | set(cur)):
        a, b = rec.get(key), cur.get(key)
        if isinstance(a, Mapping | None) and isinstance(b, Mapping | None) and a != b:
            out.update(flat_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = {"recorded": a, "current": b}
    return out


def recorded_params(step_type: str, stored_input: str | bytes, current_input: Mapping[str, Any],
                    current: Mapping[str, Any]) -> dict[str, Any]:
    """The params a recorded LLM Step was hashed with, recomputed from its stored input
    (NERVE-4022): every sampling parameter with its defaults filled, except ``seed``
    (NERVE-4012), and its decoding constraint. The constraint is the current one when the
    inputs it derives from (``response_contract``, ``tools``, ``max_intents``, ``menu``)
    are equal, else those recorded inputs stand for it.

    Args:
        step_type: the recorded Step's type.
        stored_input: the recorded Step's input, canonical JSON.
        current_input: the submitted input as builtins.
        current: the submitted params, as hashed into ``params_hash``.
    """
    stored = msgspec.json.decode(stored_input)
    stored = stored if isinstance(stored, dict) else {}
    try:
        prm = msgspec.convert(stored.get("params") or {}, SamplingParams)
    except msgspec.ValidationError:
        return {}
    out = {k: v for k, v in msgspec.to_builtins(prm).items() if k != "seed"}
    keys = ("response_contract", "tools", "max_intents", "menu")
    if all(stored.get(k) == current_input.get(k) for k in keys):
        if "json_schema" in current:
            out["json_schema"] = current["json_schema"]
    elif stored.get("response_contract") is not None or step_type == "llm_plan":
        out["json_schema"] = {k: stored[k] for k in keys if k in stored}
    return out


def check_determinism_inputs(recorded: Provenance, current: Mapping[str, Any], *,
                             details: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Compare every determinism input; raise listing all differing fields.

    Args:
        details: for a hashed input, ``{field: {"key": name, "recorded": {...},
            "current": {...}}}``: the values behind both hashes. When that field differs,
            its entry also lists, under ``key``, every value that differs
            (:func:`flat_diff`): ``params`` for ``params_hash``, ``settings`` for
            ``engine_build`` (NERVE-4022).

    Raises:
        DeterminismInputsDiffer: ``fields`` maps each differing name to
            ``{"recorded": ..., "current": ...}`` (plus its details); the message names
            the differing fields and, for hashed ones, the values behind them.
    """
    diff: dict[str, dict[str, Any]] = {}
    named: list[str] = []
    for name in DETERMINISM_FIELDS:
        rec = getattr(recorded, name)
        cur = current.get(name)
        if rec == cur or (rec is None and name in _RECORDED_SINCE):
            continue
        diff[name] = {"recorded": rec, "current": cur}
        detail = (details or {}).get(name)
        if detail is None:
            named.append(name)
            continue
        changed = flat_diff(detail["recorded"], detail["current"])
        diff[name][detail["key"]] = changed
        named.append(f"{name} ({', '.join(changed) or 'not recorded'})")
    if diff:
        raise DeterminismInputsDiffer(
            "strict_replay refused: determinism inputs differ: " + ", ".join(sorted(named)),
            fields=diff)


def frames_hash(rows: Iterable[EventRead]) -> str:
    """The content hash of a Step's durable frames (NERVE-4025).

    It is ``b3:`` + hex(blake3) of the SSE bytes the frames make, in sequence order:
    exactly the body of a full read of the Step's stream (STREAM-2004), so a reader can
    check what it received against it.

    Args:
        rows: every frame of the Step as ``(seq, type, data)``, ascending.

    Returns:
        ``b3:<64 hex>``.
    """
    hasher = blake3.blake3()
    for seq, frame_type, data in rows:
        hasher.update(sse_frame(seq, frame_type, data))
    return "b3:" + hasher.hexdigest()


def token_bytes(token: TokenData) -> bytes:
    """A token frame's exact bytes: ``b`` decoded, or the UTF-8 of ``t`` for a frame
    recorded before ``b`` existed (STREAM-2006). An undecodable ``b`` counts as its
    ASCII text, so it still compares unequal to any real token."""
    if token.b is None:
        return token.t.encode()
    try:
        return base64.b64decode(token.b, validate=True)
    except (binascii.Error, ValueError):
        return b"\xff" + token.b.encode()


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
            if t is None:
                return None
            return {"t": t.t, "id": t.id,
                    "b": base64.b64encode(token_bytes(t)).decode("ascii")}
        return ReplayDiverged(run_id=self.run_id, step_id=self.step_id, index=index,
                              expected=view(expected), actual=view(actual))

    def check(self, actual: TokenData) -> None:
        """Raise ``REPLAY_DIVERGED`` unless ``actual`` has the recorded token's id and
        bytes at its index."""
        i = actual.i
        exp = self.expected[i] if i < len(self.expected) else None
        if exp is None or exp.id != actual.id or token_bytes(exp) != token_bytes(actual):
            raise self._diverged(i, exp, actual)

    def finish(self, produced: int) -> None:
        """Raise ``REPLAY_DIVERGED`` when the live stream ended before the recording did."""
        if produced < len(self.expected):
            raise self._diverged(produced, self.expected[produced], None)
