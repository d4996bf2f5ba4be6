"""Run policy, evaluated before execution: allow/deny and redaction (POLICY-3003,
POLICY-3021).

Denials are ``POLICY_DENIED`` before any compute. Redaction replaces every match of the
policy's patterns in the prompt (or in each chat message) with ``[REDACTED]`` before the
engine sees it; the count is recorded in the Step's ``started`` frame, and since the
patterns are part of the policy, the policy hash (a determinism input) covers them.

The patterns come from the request, so they compile and run on RE2 (linear in the text,
memory bounded by :data:`RE2_MAX_MEM`), never on Python ``re``. One RE2 search is linear,
but replacing every match searches again after each one, and a search may read to the end
of the text before it settles on a short match (``a.*b|a`` on ``aaaa…``): redaction of one
Step input therefore makes at most :data:`MAX_REDACTIONS` replacements and reads at most
:data:`MAX_REDACTION_SCAN` characters (each search counted as reading to the end of its
text); past either bound the Step is refused (``INVALID_PARAMS``, ``policy.redact``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from contracts.errors import InvalidParams, PolicyDenied
from contracts.runs import Policy
from orchestrator_core.linear_regex import compile_linear

__all__ = [
    "MAX_PATTERNS",
    "MAX_PATTERN_CHARS",
    "MAX_REDACTIONS",
    "MAX_REDACTION_SCAN",
    "RE2_MAX_MEM",
    "REDACTED",
    "check_allowed",
    "redact",
    "validate_policy",
]

REDACTED = "[REDACTED]"
MAX_PATTERNS = 32
MAX_PATTERN_CHARS = 256
RE2_MAX_MEM = 8 << 20
"""RE2 memory bound of one policy's combined redaction program (bytes)."""
MAX_REDACTIONS = 4096
"""Most replacements redaction makes in one Step input."""
MAX_REDACTION_SCAN = 16 << 20
"""Most characters redaction of one Step input reads (each search: to its text's end)."""


def _re2(pattern: str) -> Any:
    """Compile one redaction program on RE2 within :data:`RE2_MAX_MEM`; raises
    ``ValueError`` with RE2's reason (no fallback to Python ``re``)."""
    return compile_linear(pattern, RE2_MAX_MEM)


@lru_cache(maxsize=64)
def _compiled(patterns: tuple[str, ...]) -> Any:
    if not patterns:
        return None
    return _re2("|".join(f"(?:{p})" for p in patterns))


def validate_policy(policy: Policy) -> None:
    """Refuse a policy whose redaction patterns are too many, too long, or not patterns
    RE2 compiles (POLICY-3021).

    Raises:
        InvalidParams: ``data.field`` is ``policy.redact``; ``data.pattern`` names the
            offending pattern.
    """
    if len(policy.redact) > MAX_PATTERNS:
        raise InvalidParams(f"at most {MAX_PATTERNS} redaction patterns",
                            data={"field": "policy.redact"})
    for p in policy.redact:
        if len(p) > MAX_PATTERN_CHARS:
            raise InvalidParams(f"redaction patterns are at most {MAX_PATTERN_CHARS} chars",
                                data={"field": "policy.redact", "pattern": p[:64]})
        try:
            _re2(p)
        except ValueError as exc:
            raise InvalidParams(f"invalid redaction pattern (RE2, the linear-time engine, "
                                f"does not compile it): {exc}",
                                data={"field": "policy.redact", "pattern": p}) from exc
    try:
        _compiled(tuple(policy.redact))
    except ValueError as exc:
        raise InvalidParams(f"the redaction patterns together do not compile on RE2: {exc}",
                            data={"field": "policy.redact"}) from exc


def check_allowed(policy: Policy, *, step_type: str, model: str | None = None,
                  tool: str | None = None, fs_op: str | None = None) -> None:
    """Raise ``POLICY_DENIED`` unless the policy admits the step type, model, tool and
    file-system operation."""
    for rule, value, allow, deny in (
        ("step_types", step_type, policy.allow_step_types, policy.deny_step_types),
        ("models", model, policy.allow_models, policy.deny_models),
        ("tools", tool, policy.allow_tools, policy.deny_tools),
        ("fs_ops", fs_op, policy.allow_fs_ops, policy.deny_fs_ops),
    ):
        if value is None:
            continue
        if value in deny or (allow is not None and value not in allow):
            raise PolicyDenied(f"policy denies {rule[:-1].replace('_', ' ')} {value}",
                               data={"rule": rule, "value": value})


def redact(policy: Policy, texts: Sequence[str]) -> tuple[list[str], int]:
    """Apply the policy's redaction to each text, on RE2 (POLICY-3003, POLICY-3021).

    Returns:
        ``(redacted texts, number of replacements)``.

    Raises:
        InvalidParams: ``data.field`` ``policy.redact``: the input needs more than
            :data:`MAX_REDACTIONS` replacements, or more than :data:`MAX_REDACTION_SCAN`
            characters read.
    """
    rx = _compiled(tuple(policy.redact))
    if rx is None:
        return list(texts), 0
    out: list[str] = []
    total = scanned = 0
    for text in texts:
        pieces: list[str] = []
        end = 0
        scanned += len(text)  # the first search may read the whole text
        for m in rx.finditer(text):
            total += 1
            if total > MAX_REDACTIONS or scanned > MAX_REDACTION_SCAN:
                raise InvalidParams(
                    "the run's redaction patterns match too often in this input: at most "
                    f"{MAX_REDACTIONS} replacements and {MAX_REDACTION_SCAN} characters "
                    "read per step", data={"field": "policy.redact",
                                           "max_redactions": MAX_REDACTIONS,
                                           "max_scan_chars": MAX_REDACTION_SCAN})
            pieces += (text[end:m.start()], REDACTED)
            end = m.end()
            scanned += len(text) - end  # the next search may read to the end again
        pieces.append(text[end:])
        out.append("".join(pieces))
    return out, total
