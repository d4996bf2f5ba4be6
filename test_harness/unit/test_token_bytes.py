"""Engine tokens as bytes: the text each token completes, and stop strings (STREAM-2006)."""

from __future__ import annotations

import pytest

from worker_adapters.token_bytes import StopFilter, TokenText

JA = "日本".encode()  # e6 97 a5 e6 9c ac


class TestTokenText:
    """``t`` is the text a token completes; concatenating every ``t`` is valid text."""

    def test_a_character_split_over_two_tokens_appears_with_the_second(self) -> None:
        """The first token ends inside the character: its text is empty."""
        texts = TokenText()
        assert [texts.push(b) for b in (b" caf\xc3", b"\xa9", b"!")] == [" caf", "\u00e9", "!"]

    def test_a_character_split_over_three_tokens(self) -> None:
        """A three-byte character split 1 + 1 + 1 bytes is shown once, at its last byte."""
        texts = TokenText()
        assert [texts.push(JA[k:k + 1]) for k in range(3)] == ["", "", "日"]
        assert texts.pending == b""

    def test_an_incomplete_tail_stays_pending(self) -> None:
        """Bytes of a character the stream never completed are in no text."""
        texts = TokenText()
        assert (texts.push(b"ab\xe6\x97"), texts.pending) == ("ab", b"\xe6\x97")

    def test_invalid_bytes_become_the_replacement_character(self) -> None:
        """A stray continuation byte cannot stall the text: it is U+FFFD at once."""
        texts = TokenText()
        assert [texts.push(b) for b in (b"\xa9", b"x")] == ["\ufffd", "x"]


def _run(stop: list[str], tokens: list[bytes]) -> tuple[list[tuple[int, bytes]], StopFilter]:
    f = StopFilter(stop)
    out: list[tuple[int, bytes]] = []
    for n, data in enumerate(tokens):
        out += f.push(n, data)
        if f.matched:
            return out, f
    return out + f.flush(), f


class TestStopFilter:
    """Tokens that could start a stop string are held; a match ends the stream."""

    def test_without_stop_strings_every_token_passes_at_once(self) -> None:
        """Nothing is held back."""
        f = StopFilter([])
        assert f.push(1, b"a") == [(1, b"a")]
        assert (f.matched, f.withheld) == (False, 0)

    def test_a_stop_string_across_tokens_is_withheld(self) -> None:
        """``END`` split over two tokens: neither is shown, both were sampled."""
        out, f = _run(["END"], [b"a", b" E", b"ND", b"z"])
        assert out == [(0, b"a"), (1, b" ")]
        assert (f.matched, f.withheld) == (True, 1)

    def test_a_token_straddling_the_stop_is_cut_before_it(self) -> None:
        """The bytes before the stop string are output; the rest of the token is not."""
        out, f = _run(["\n"], [b"Hi", b".\nNext"])
        assert out == [(0, b"Hi"), (1, b".")]
        assert (f.matched, f.withheld) == (True, 0)

    def test_a_token_that_begins_with_the_stop_is_withheld_whole(self) -> None:
        """A cut that leaves nothing shows no frame for that token."""
        out, f = _run(["\n"], [b"Hi", b"\nNext"])
        assert out == [(0, b"Hi")]
        assert (f.matched, f.withheld) == (True, 1)

    def test_a_held_prefix_that_does_not_complete_is_released(self) -> None:
        """``E`` could begin ``END``; ``X`` rules it out, so both are shown in order."""
        f = StopFilter(["END"])
        assert f.push(0, b"E") == []
        assert f.push(1, b"X") == [(0, b"E"), (1, b"X")]

    def test_the_end_of_the_stream_flushes_held_tokens(self) -> None:
        """A stream cut by max_tokens shows what it held."""
        out, f = _run(["END"], [b"a", b"EN"])
        assert out == [(0, b"a"), (1, b"EN")]
        assert (f.matched, f.withheld) == (False, 0)

    def test_the_earliest_of_several_stop_strings_wins(self) -> None:
        """Positions decide, not the order of the list."""
        out, f = _run(["cd", "b"], [b"abcd"])
        assert out == [(0, b"a")]
        assert f.matched

    @pytest.mark.parametrize("stop", ["本", "\u00e9"])
    def test_a_multibyte_stop_string_matches_across_split_bytes(self, stop: str) -> None:
        """Stop strings are matched on bytes, whatever the token boundaries."""
        data = ("x" + stop + "y").encode()
        out, f = _run([stop], [data[k:k + 1] for k in range(len(data))])
        assert (out, f.matched, f.withheld) == ([(0, b"x")], True, len(stop.encode()))
