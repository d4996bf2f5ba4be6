"""Bounded measurement of recorded values (POLICY-3030)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from orchestrator_core.bounds import MAX_VALUE_DEPTH, ValueTooDeep, json_size, oversize


def _doubled(stages: int) -> list[Any]:
    value: list[Any] = [{"k": "v"}]
    for _ in range(stages):
        value = [value, value]
    return value


class TestJsonSize:
    """``json_size`` is the compact JSON size, measured no further than the limit."""

    @pytest.mark.parametrize("value", [
        None, True, False, 0, -17, 2**63, 1.5, -0.0, 1e300, "", "é\n\"\\\x01日本",
        [], {}, [1, [2, {"a": "b"}]], {"k": None, "é": [1.25, "x"]}, (1, (2,)),
    ])
    def test_it_equals_the_encoded_length(self, value: Any) -> None:
        """[POLICY-3030] Exactly the bytes msgspec writes for the value."""
        assert json_size(value, 1 << 20) == len(msgspec.json.encode(value))

    def test_a_value_at_the_limit_fits_and_one_byte_more_does_not(self) -> None:
        """The limit is inclusive."""
        value = {"text": "x" * 100}
        size = len(msgspec.json.encode(value))
        assert (json_size(value, size), json_size(value, size - 1) > size - 1) == (size, True)

    def test_shared_references_count_each_time_and_the_walk_stops_at_the_limit(self) -> None:
        """A 2^60-fold doubled value is measured up to the limit only, never encoded."""
        assert 1024 < json_size(_doubled(60), 1024) <= 1024 + 16

    def test_a_long_string_is_refused_without_encoding_it(self) -> None:
        """A string longer than the room left is over at once."""
        assert json_size(["x" * 10_000], 100) == 101

    def test_nesting_beyond_the_depth_limit_is_refused(self) -> None:
        """[POLICY-3030] Deep values are refused before an encoder would recurse into them."""
        deep: list[Any] = []
        for _ in range(MAX_VALUE_DEPTH + 1):
            deep = [deep]
        with pytest.raises(ValueTooDeep):
            json_size(deep, 1 << 20)


class TestOversize:
    """``oversize`` gives the refusal's data, or None."""

    def test_within_the_limit_is_none(self) -> None:
        """Nothing to refuse."""
        assert oversize({"a": [1, 2, 3]}, 100) is None

    def test_over_the_limit_names_reason_and_limit(self) -> None:
        """[POLICY-3030] reason size, limit_bytes."""
        assert oversize(_doubled(40), 4096) == {"reason": "size", "limit_bytes": 4096}

    def test_too_deep_names_reason_and_depth(self) -> None:
        """reason depth, limit_depth."""
        deep: list[Any] = []
        for _ in range(300):
            deep = [deep]
        assert oversize(deep, 1 << 20) == {"reason": "depth", "limit_depth": 256}
