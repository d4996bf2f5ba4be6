"""Engine tokens as bytes: UTF-8 text of a token stream, and stop strings (STREAM-2006).

A token's bytes may end inside a multi-byte UTF-8 character (the engine splits a
Japanese character, or ``é``, over two tokens). Two pure rules make such a stream exact
and readable at once:

* :class:`TokenText`: the text ``t`` of token ``i`` is the text that token *completes*:
  the bytes of tokens ``0..i`` decoded incrementally (``codecs`` incremental UTF-8 decoder,
  ``errors="replace"``) minus the text of tokens ``0..i-1``. It is empty when the token
  ends inside a character, and it holds the whole character (bytes of earlier tokens
  included) when the token completes one. Concatenating every ``t`` gives valid text;
  concatenating every token's bytes gives the engine's exact output.
* :class:`StopFilter`: tokens are held back while the bytes not yet released could be the
  beginning of a stop string. On a match the stream ends: the tokens wholly before the
  match are released, a token that straddles the match's start is released cut to the
  bytes before it, and the tokens from the match on are withheld (counted, never shown).

Both run in the engine worker (stop strings) and in the orchestrator (text), and both
are unit-tested without an engine.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

__all__ = ["StopFilter", "TokenText"]


class TokenText:
    """Turns each token's bytes into the text it completes (see the module docstring)."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        """Text completed by a token with these bytes; ``""`` while a character is open."""
        return self._decoder.decode(data, final=False)

    @property
    def pending(self) -> bytes:
        """Bytes of a character begun but not completed by the tokens so far."""
        return self._decoder.getstate()[0]


class StopFilter:
    """Holds tokens back while they could start a stop string; ends the stream on one.

    Args:
        stop: the stop strings; empty strings are ignored.

    Attributes:
        matched: True once a stop string appeared in the stream's bytes.
        withheld: tokens not released because they lie at or after the match's start.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stops = [s.encode("utf-8") for s in stop if s]
        self._held: list[tuple[int, bytes]] = []
        self._pending = b""
        self.matched = False
        self.withheld = 0

    def push(self, token_id: int, data: bytes) -> list[tuple[int, bytes]]:
        """Add one sampled token; return the tokens that may be shown now, in order.

        After a match (``matched`` becomes True) the caller must stop sampling; the
        returned list then ends with the tokens before the stop string, the last one
        possibly cut.
        """
        if not self._stops:
            return [(token_id, data)]
        self._held.append((token_id, data))
        self._pending += data
        cut = min((k for k in (self._pending.find(s) for s in self._stops) if k >= 0),
                  default=-1)
        if cut >= 0:
            self.matched = True
            return self._release_before(cut)
        keep = max(self._prefix_overlap(s) for s in self._stops)
        return self._release_before(len(self._pending) - keep, keep_rest=True)

    def flush(self) -> list[tuple[int, bytes]]:
        """The stream ended without a match: release every held token."""
        out, self._held, self._pending = self._held, [], b""
        return out

    def _prefix_overlap(self, stop: bytes) -> int:
        """Length of the longest suffix of the pending bytes that begins ``stop``."""
        for n in range(min(len(stop) - 1, len(self._pending)), 0, -1):
            if self._pending.endswith(stop[:n]):
                return n
        return 0

    def _release_before(self, limit: int, *, keep_rest: bool = False) -> list[tuple[int, bytes]]:
        """Release held tokens whose bytes end at or before byte ``limit`` of the pending
        bytes. Without ``keep_rest`` (a match) the straddling token is released cut at
        ``limit`` and the remaining tokens are withheld."""
        out: list[tuple[int, bytes]] = []
        pos = 0
        rest: list[tuple[int, bytes]] = []
        for n, (tid, data) in enumerate(self._held):
            end = pos + len(data)
            if end <= limit and not rest:
                out.append((tid, data))
            elif keep_rest:
                rest = self._held[n:]
                break
            else:
                if pos < limit:
                    out.append((tid, data[:limit - pos]))
                    self.withheld = len(self._held) - n - 1
                else:
                    self.withheld = len(self._held) - n
                break
            pos = end
        if keep_rest:
            self._held = rest
            self._pending = self._pending[pos:] if rest else b""
        else:
            self._held, self._pending = [], b""
        return out
