"""Request-supplied regular expressions, compiled on RE2 only (POLICY-3020, POLICY-3021).

RE2 matches in time linear in the text. google-re2 has no fallback to Python ``re``:
syntax RE2 does not have (backreferences, lookaround, possessive quantifiers) raises,
and so does a program larger than its memory bound. Captures are never needed here, and
compiling without them makes long searches several times cheaper.
"""

from __future__ import annotations

from typing import Any

import re2

__all__ = ["compile_linear"]


def compile_linear(pattern: str, max_mem: int) -> Any:
    """The RE2 program of ``pattern``, without captures, within ``max_mem`` bytes.

    Args:
        pattern: the regular expression (RE2 syntax).
        max_mem: RE2's memory bound for the compiled program (bytes).

    Returns:
        A compiled ``re2`` pattern (``search``, ``subn``, ... on ``bytes`` or ``str``).

    Raises:
        ValueError: with RE2's reason, for syntax RE2 does not have, a program past
            ``max_mem``, or a pattern that is not valid UTF-8.
    """
    options = re2.Options()
    options.max_mem = max_mem
    options.log_errors = False
    options.never_capture = True
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "not supported"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from exc
    except UnicodeEncodeError as exc:
        raise ValueError("the pattern is not valid UTF-8") from exc
