"""Canonical JSON and content addressing (NERVE-4001, NERVE-4012, NERVE-4009)."""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import InvalidParams
from orchestrator_core.canonical import b3, canonical_json, derive_seed

_SAFE = 2**53 - 1
_scalars = (st.none() | st.booleans() | st.integers(-_SAFE, _SAFE)
            | st.text(st.characters(codec="utf-8")))
_json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=4), inner, max_size=4),
    max_leaves=20)
_json_values_with_floats = st.recursive(
    _scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=4), inner, max_size=4),
    max_leaves=20)


class TestCanonicalJson:
    """Canonical JSON is UTF-8, sorted keys, no whitespace, finite numbers only."""

    def test_key_order_and_whitespace_do_not_matter(self) -> None:
        """Two dicts with the same content encode to the same bytes."""
        a = {"b": [1, {"z": 1, "y": 2}], "a": "é"}
        b = {"a": "é", "b": [1, {"y": 2, "z": 1}]}
        assert canonical_json(a) == canonical_json(b) == \
            '{"a":"é","b":[1,{"y":2,"z":1}]}'.encode()

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_numbers_are_refused(self, bad: float) -> None:
        """NaN and Infinity have no canonical form."""
        with pytest.raises(InvalidParams) as info:
            canonical_json({"x": [1, bad]})
        assert info.value.data == {"path": "$.x[1]"}

    def test_b3_is_prefixed_hex_of_256_bits(self) -> None:
        """``b3:`` + 64 hex digits, stable across calls."""
        h = b3({"a": 1})
        assert h == b3({"a": 1}) and h.startswith("b3:") and len(h) == 67
        assert h != b3({"a": 2})


class TestDeriveSeed:
    """A Step's default seed comes from the Run seed and its client_token."""

    def test_same_inputs_give_the_same_seed(self) -> None:
        """A retried interpreter gets the same seed."""
        assert derive_seed(7, "step-1") == derive_seed(7, "step-1")

    def test_seed_depends_on_both_inputs_and_fits_31_bits(self) -> None:
        """Different run seeds or tokens give different seeds, all in [0, 2**31)."""
        seeds = {derive_seed(r, t) for r in range(20) for t in ("a", "b", "c")}
        assert len(seeds) == 60
        assert all(0 <= s < 2**31 for s in seeds)


# RFC 8785 Appendix B: IEEE-754 bit patterns and their JCS serialisation.
_RFC_8785_NUMBERS = [
    ("0000000000000000", "0"), ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"), ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"), ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"), ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"), ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"), ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"), ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"), ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


class TestRfc8785:
    """[NERVE-4009] Canonical JSON is RFC 8785 (JCS), byte for byte."""

    def test_the_rfc_sample_object(self) -> None:
        """RFC 8785 §3.2.2's sample: numbers, escapes and literals."""
        value = {
            "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
            "literals": [None, True, False],
        }
        assert canonical_json(value) == (
            '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,'
            '1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}').encode()

    def test_keys_sort_by_utf16_code_units(self) -> None:
        """RFC 8785 §3.2.3's sorting sample: U+1F600 (a surrogate pair) sorts before
        U+FB33, although its code point is higher."""
        value = {"\u20ac": "Euro Sign", "\r": "Carriage Return",
                 "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One",
                 "\U0001f600": "Emoji: Grinning Face", "\u0080": "Control",
                 "\u00f6": "Latin Small Letter O With Diaeresis"}
        assert canonical_json(value) == (
            '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
            '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
            '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
        ).encode()

    @pytest.mark.parametrize(("bits", "text"), _RFC_8785_NUMBERS)
    def test_the_rfc_number_table(self, bits: str, text: str) -> None:
        """Each double of RFC 8785 Appendix B serialises to its listed text."""
        (value,) = struct.unpack(">d", bytes.fromhex(bits))
        assert canonical_json([value]) == f"[{text}]".encode()

    @pytest.mark.parametrize(("value", "text"), [
        (1.0, "1"), (1e21, "1e+21"), (1e-7, "1e-7"), (-0.0, "0"), (5e-324, "5e-324"),
        (0.1 + 0.2, "0.30000000000000004"), (2.5e-6, "0.0000025"),
        (123e18, "123000000000000000000"),
    ])
    def test_floats_a_client_writes(self, value: float, text: str) -> None:
        """Floats serialise as ECMAScript writes them, whatever Python's repr says."""
        assert canonical_json({"x": value}) == f'{{"x":{text}}}'.encode()

    def test_an_integer_and_its_float_hash_alike(self) -> None:
        """``{"temperature": 1.0}`` and ``{"temperature": 1}`` are one content address,
        as a JavaScript client computes it (the spec's test vector)."""
        content = {"ast_ir": {"t": 1.0}, "config": {}, "tools": []}
        assert canonical_json(content) == b'{"ast_ir":{"t":1},"config":{},"tools":[]}'
        assert b3(content) == b3({"ast_ir": {"t": 1}, "config": {}, "tools": []}) == \
            "b3:7259364c38d22ed582e3ebf08d53471026141f6112a323d6176b492c8c2730e0"

    def test_integers_beyond_the_safe_range_keep_every_digit(self) -> None:
        """A 63-bit seed is written exactly, with or without floats beside it."""
        big = 2**63 - 1
        assert canonical_json({"seed": big, "t": 0.5}) == \
            b'{"seed":9223372036854775807,"t":0.5}'
        assert canonical_json({"seed": -big, "n": [big]}) == \
            b'{"n":[9223372036854775807],"seed":-9223372036854775807}'

    def test_structs_are_encoded_as_their_fields(self) -> None:
        """A msgspec Struct inside a value is converted to its fields first."""

        class P(msgspec.Struct):
            temperature: float
            stop: tuple[str, ...] = ()

        assert canonical_json({"p": P(temperature=1.0)}) == \
            b'{"p":{"stop":[],"temperature":1}}'

    @settings(max_examples=300, deadline=None, database=None)
    @given(_json_values)
    def test_the_fast_path_equals_rfc8785(self, value: Any) -> None:
        """Values without floats (ASCII or not) encode exactly as the ``rfc8785``
        package encodes them."""
        assert canonical_json(value) == rfc8785.dumps(value)

    @settings(max_examples=300, deadline=None, database=None)
    @given(_json_values_with_floats)
    def test_values_with_floats_equal_rfc8785(self, value: Any) -> None:
        """Values with floats encode exactly as the ``rfc8785`` package encodes them."""
        assert canonical_json(value) == rfc8785.dumps(value)
