"""Canonical JSON and content addressing (NERVE-4001, NERVE-4012)."""

from __future__ import annotations

import pytest

from contracts.errors import InvalidParams
from orchestrator_core.canonical import b3, canonical_json, derive_seed


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
