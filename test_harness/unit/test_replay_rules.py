"""Replay rules: input diffs, determinism inputs, token verification (NERVE-4021..4023)."""

from __future__ import annotations

import msgspec
import pytest

from contracts.errors import DeterminismInputsDiffer, Nondeterminism, ReplayDiverged
from contracts.events import Provenance, TokenData
from orchestrator_core.replay import (
    TokenVerifier,
    check_determinism_inputs,
    check_recorded_match,
    first_difference,
)

PROV = Provenance(
    seed=1, prompt_hash="p", params_hash="q", engine="llama.cpp", engine_version="v",
    engine_build="b", model_hash="m", pool_id="cpu-0", replica_id="cpu-0/r0", tokens_in=3,
    tokens_out=2, cost_usd=0.0, decode_time_ms=5, finish_reason="stop", policy_hash="h",
    price_table_version="t")
CURRENT = {"prompt_hash": "p", "params_hash": "q", "seed": 1, "engine": "llama.cpp",
           "engine_version": "v", "engine_build": "b", "model_hash": "m",
           "replica_id": "cpu-0/r0", "policy_hash": "h"}


class TestFirstDifference:
    """The first differing path names the field a NONDETERMINISM error reports."""

    def test_equal_values_have_no_difference(self) -> None:
        """Deep equality."""
        assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}) is None

    def test_nested_difference_is_named_by_path(self) -> None:
        """Keys are visited in sorted order; list items by index."""
        assert first_difference({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "input.a[1].b"
        assert first_difference({"a": 1}, {"a": 1, "z": 0}) == "input.z"


class TestRecordedMatch:
    """A replayed Step must match its recording by type and input hash."""

    def test_differing_input_names_the_field(self) -> None:
        """The error carries the client_token, the field and both hashes."""
        rec = {"type": "llm_call", "input_hash": "b3:r",
               "input": msgspec.json.encode({"prompt": "x"})}
        with pytest.raises(Nondeterminism) as info:
            check_recorded_match(client_token="t", recorded=rec, step_type="llm_call",
                                 input_hash="b3:s", input_value={"prompt": "y"})
        assert info.value.data == {"client_token": "t", "field": "input.prompt",
                                   "recorded_hash": "b3:r", "submitted_hash": "b3:s"}

    def test_differing_type_is_named(self) -> None:
        """Type is checked before the input."""
        rec = {"type": "tool_call", "input_hash": "b3:r", "input": b"{}"}
        with pytest.raises(Nondeterminism) as info:
            check_recorded_match(client_token="t", recorded=rec, step_type="llm_call",
                                 input_hash="b3:r", input_value={})
        assert info.value.data is not None and info.value.data["field"] == "type"


class TestDeterminismInputs:
    """strict_replay is refused when any determinism input differs (NERVE-4022)."""

    def test_identical_inputs_pass(self) -> None:
        """No error when everything matches."""
        check_determinism_inputs(PROV, CURRENT)

    def test_every_differing_field_is_listed(self) -> None:
        """All differences are reported at once, with recorded and current values."""
        with pytest.raises(DeterminismInputsDiffer) as info:
            check_determinism_inputs(PROV, {**CURRENT, "seed": 2, "model_hash": "m2"})
        assert info.value.fields == {"seed": {"recorded": 1, "current": 2},
                                     "model_hash": {"recorded": "m", "current": "m2"}}


class TestTokenVerifier:
    """Byte-exact means text bytes, token ids and the index sequence."""

    def _verifier(self) -> TokenVerifier:
        rec = [msgspec.json.encode(TokenData(i=i, t=t, id=n))
               for i, (t, n) in enumerate([("Hel", 10), ("lo", 11)])]
        return TokenVerifier(rec, run_id="run_1", step_id="stp_1")

    def test_matching_stream_passes(self) -> None:
        """Same tokens, same ids, same length."""
        v = self._verifier()
        v.check(TokenData(i=0, t="Hel", id=10))
        v.check(TokenData(i=1, t="lo", id=11))
        v.finish(2)

    @pytest.mark.parametrize("actual", [TokenData(i=1, t="lo!", id=11),
                                        TokenData(i=1, t="lo", id=12)])
    def test_text_or_id_difference_diverges_at_its_index(self, actual: TokenData) -> None:
        """The error carries index, expected and actual."""
        v = self._verifier()
        v.check(TokenData(i=0, t="Hel", id=10))
        with pytest.raises(ReplayDiverged) as info:
            v.check(actual)
        assert (info.value.index, info.value.expected, info.value.actual) == (
            1, {"t": "lo", "id": 11}, {"t": actual.t, "id": actual.id})
        assert (info.value.run_id, info.value.step_id) == ("run_1", "stp_1")

    def test_a_shorter_stream_diverges_where_it_ended(self) -> None:
        """Ending early is a divergence with no actual token."""
        v = self._verifier()
        v.check(TokenData(i=0, t="Hel", id=10))
        with pytest.raises(ReplayDiverged) as info:
            v.finish(1)
        assert (info.value.index, info.value.actual) == (1, None)

    def test_a_longer_stream_diverges_past_the_recording(self) -> None:
        """An extra token has no expected counterpart."""
        v = self._verifier()
        with pytest.raises(ReplayDiverged) as info:
            v.check(TokenData(i=2, t="x", id=1))
        assert (info.value.index, info.value.expected) == (2, None)
