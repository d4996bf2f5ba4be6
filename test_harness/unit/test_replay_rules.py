"""Replay rules: input diffs, determinism inputs, token verification (NERVE-4021..4023)."""

from __future__ import annotations

import base64

import msgspec
import pytest

from contracts.errors import DeterminismInputsDiffer, Nondeterminism, ReplayDiverged
from contracts.events import Provenance, TokenData
from orchestrator_core.canonical import b3, b3_as_recorded, b3_legacy
from orchestrator_core.replay import (
    TokenVerifier,
    check_determinism_inputs,
    check_recorded_match,
    first_difference,
    flat_diff,
    recorded_params,
    same_build,
)
from orchestrator_core.rows import StepRow

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


def _recorded(step_type: str, input_json: str) -> StepRow:
    """A recorded Step row of this type and input, with input hash ``b3:r``."""
    return StepRow(step_id="s", run_id="r", type=step_type, client_token="t", input=input_json,
                   input_hash="b3:r", placement=None, status="succeeded", seed=None,
                   created_at="t")


class TestRecordedMatch:
    """A replayed Step must match its recording by type and input hash."""

    def test_differing_input_names_the_field(self) -> None:
        """The error carries the client_token, the field and both hashes."""
        rec = _recorded("llm_call", msgspec.json.encode({"prompt": "x"}).decode())
        with pytest.raises(Nondeterminism) as info:
            check_recorded_match(client_token="t", recorded=rec, step_type="llm_call",
                                 input_hash="b3:s", input_value={"prompt": "y"})
        assert info.value.data == {"client_token": "t", "field": "input.prompt",
                                   "recorded_hash": "b3:r", "submitted_hash": "b3:s"}

    def test_differing_type_is_named(self) -> None:
        """Type is checked before the input."""
        rec = _recorded("tool_call", "{}")
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

    def test_a_params_hash_difference_lists_every_parameter_that_differs(self) -> None:
        """Each changed sampling parameter is named with its recorded and current value."""
        rec = {"temperature": 0.8, "top_p": 0.95, "max_tokens": 24, "stop": []}
        cur = {"temperature": 0.0, "top_p": 0.9, "max_tokens": 24, "stop": []}
        with pytest.raises(DeterminismInputsDiffer) as info:
            check_determinism_inputs(PROV, {**CURRENT, "params_hash": "q2"}, details={
                "params_hash": {"key": "params", "recorded": rec, "current": cur}})
        assert info.value.fields == {"params_hash": {
            "recorded": "q", "current": "q2",
            "params": {"temperature": {"recorded": 0.8, "current": 0.0},
                       "top_p": {"recorded": 0.95, "current": 0.9}}}}
        assert info.value.message == ("strict_replay refused: determinism inputs differ: "
                                      "params_hash (temperature, top_p)")

    def test_an_engine_build_difference_names_the_setting(self) -> None:
        """Nested settings (the replica's environment) are named by dotted path."""
        rec = {"n_batch": 512, "env": {"LANG": "C"}}
        cur = {"n_batch": 512, "env": {"LANG": "C", "GGML_SCHED_MAX_COPIES": "1"}}
        with pytest.raises(DeterminismInputsDiffer) as info:
            check_determinism_inputs(PROV, {**CURRENT, "engine_build": "b2"}, details={
                "engine_build": {"key": "settings", "recorded": rec, "current": cur}})
        assert info.value.fields == {"engine_build": {
            "recorded": "b", "current": "b2",
            "settings": {"env.GGML_SCHED_MAX_COPIES": {"recorded": None, "current": "1"}}}}
        assert info.value.message.endswith("engine_build (env.GGML_SCHED_MAX_COPIES)")

    def test_a_build_without_recorded_settings_says_so(self) -> None:
        """A fingerprint the store never saw still refuses, with nothing to list."""
        with pytest.raises(DeterminismInputsDiffer) as info:
            check_determinism_inputs(PROV, {**CURRENT, "engine_build": "b2"}, details={
                "engine_build": {"key": "settings", "recorded": None, "current": {"a": 1}}})
        assert info.value.fields["engine_build"]["settings"] == {
            "a": {"recorded": None, "current": 1}}


class TestRecordedParams:
    """The recorded params are recomputed from the stored input, defaults filled."""

    def test_defaults_are_filled_and_the_seed_left_out(self) -> None:
        """Only what the client sent was stored; the hash covered every parameter."""
        stored = msgspec.json.encode({"model": "m", "prompt": "x",
                                      "params": {"temperature": 0.8, "seed": 3}})
        assert recorded_params("llm_call", stored, {"model": "m", "prompt": "x"}, {}) == {
            "max_tokens": 256, "min_p": 0.05, "repeat_penalty": 1.0, "stop": [],
            "temperature": 0.8, "top_k": 40, "top_p": 0.95}

    def test_a_changed_contract_stands_for_the_json_schema(self) -> None:
        """The decoding constraint is shown as the recorded input it came from."""
        contract = {"type": "object"}
        stored = msgspec.json.encode({"prompt": "x", "response_contract": contract})
        out = recorded_params("llm_call", stored, {"prompt": "x"}, {})
        assert out["json_schema"] == {"response_contract": contract}

    def test_flat_diff_names_nested_keys(self) -> None:
        """Dotted names; a missing key is None on its side."""
        assert flat_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "d": 3}) == {
            "a.b": {"recorded": 1, "current": 2}, "c": {"recorded": 2, "current": None},
            "d": {"recorded": None, "current": 3}}


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

    @pytest.mark.parametrize(("actual", "view"), [
        (TokenData(i=1, t="lo!", id=11, b="bG8h"), {"t": "lo!", "id": 11, "b": "bG8h"}),
        (TokenData(i=1, t="lo", id=12, b="bG8="), {"t": "lo", "id": 12, "b": "bG8="})])
    def test_text_or_id_difference_diverges_at_its_index(self, actual: TokenData,
                                                         view: dict[str, object]) -> None:
        """The error carries index, expected and actual, each with its bytes."""
        v = self._verifier()
        v.check(TokenData(i=0, t="Hel", id=10, b="SGVs"))
        with pytest.raises(ReplayDiverged) as info:
            v.check(actual)
        assert (info.value.index, info.value.expected, info.value.actual) == (
            1, {"t": "lo", "id": 11, "b": "bG8="}, view)
        assert (info.value.run_id, info.value.step_id) == ("run_1", "stp_1")

    def test_same_text_and_id_but_other_bytes_diverges(self) -> None:
        """A token ending inside a character has empty text: only its bytes tell."""
        first = TokenData(i=0, t="", id=7, b=base64.b64encode(b"\xc3").decode())
        v = TokenVerifier([msgspec.json.encode(first)], run_id="r", step_id="s")
        with pytest.raises(ReplayDiverged) as info:
            v.check(TokenData(i=0, t="", id=7, b=base64.b64encode(b"\xe3").decode()))
        assert (info.value.index, info.value.expected, info.value.actual) == (
            0, {"t": "", "id": 7, "b": "ww=="}, {"t": "", "id": 7, "b": "4w=="})

    def test_a_frame_recorded_without_bytes_compares_by_its_text(self) -> None:
        """Frames written before ``b`` existed still verify: their bytes are UTF-8 of t."""
        legacy = [b"{\"i\":0,\"t\":\"caf\\u00e9\",\"id\":-1}"]
        v = TokenVerifier(legacy, run_id="r", step_id="s")
        v.check(TokenData(i=0, t="café", id=-1, b=base64.b64encode("café".encode()).decode()))
        v.finish(1)

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


class TestHashesRecordedBeforeRfc8785:
    """[NERVE-4048] A hash recorded under the pre-RFC 8785 form still matches its value."""

    def test_a_legacy_hash_of_the_same_value_is_kept(self) -> None:
        """The recorded legacy hash is returned when it hashes the same value."""
        params = {"temperature": 0.0, "top_p": 0.95}
        assert b3_legacy(params) != b3(params)
        assert b3_as_recorded(params, b3(params), b3_legacy(params)) == b3_legacy(params)

    def test_a_hash_of_another_value_is_not(self) -> None:
        """A recorded hash of different params still differs from the current one."""
        params = {"temperature": 0.5}
        recorded = b3_legacy({"temperature": 0.0})
        assert b3_as_recorded(params, b3(params), recorded) == b3(params)

    def test_an_engine_build_with_equal_settings_is_the_recorded_build(self) -> None:
        """Same engine, version and settings: the recorded fingerprint stands."""
        kwargs = {"engine": "llama.cpp", "version": "v", "fingerprint": "b3:new"}
        assert same_build(PROV, '{"rope":1.0}', settings={"rope": 1.0}, **kwargs) == "b"
        assert same_build(PROV, '{"rope":1.0}', settings={"rope": 2.0}, **kwargs) == "b3:new"
        assert same_build(PROV, None, settings={"rope": 1.0}, **kwargs) == "b3:new"
