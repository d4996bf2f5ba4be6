"""Run policy, evaluated before execution: allow/deny and redaction (POLICY-3003).

Denials are ``POLICY_DENIED`` before any compute. Redaction replaces every match of the
policy's patterns in the prompt (or in each chat message) with ``[REDACTED]`` before the
engine sees it; the count is recorded in the Step's ``started`` frame, and since the
patterns are part of the policy, the policy hash (a determinism input) covers them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from contracts.errors import InvalidParams, PolicyDenied
from contracts.runs import Policy

__all__ = ["REDACTED", "check_allowed", "redact", "validate_policy"]

REDACTED = "[REDACTED]"
MAX_PATTERNS = 32
MAX_PATTERN_CHARS = 256


@lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def validate_policy(policy: Policy) -> None:
    """Refuse a policy whose redaction patterns are too many, too long or invalid.

    Raises:
        InvalidParams: names the offending pattern.
    """
    if len(policy.redact) > MAX_PATTERNS:
        raise InvalidParams(f"at most {MAX_PATTERNS} redaction patterns",
                            data={"field": "policy.redact"})
    for p in policy.redact:
        if len(p) > MAX_PATTERN_CHARS:
            raise InvalidParams(f"redaction patterns are at most {MAX_PATTERN_CHARS} chars",
                                data={"field": "policy.redact", "pattern": p[:64]})
        try:
            re.compile(p)
        except re.error as exc:
            raise InvalidParams(f"invalid redaction pattern: {exc}",
                                data={"field": "policy.redact", "pattern": p}) from exc


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
    """Apply the policy's redaction to each text.

    Returns:
        ``(redacted texts, number of replacements)``.
    """
    rx = _compiled(tuple(policy.redact))
    if rx is None:
        return list(texts), 0
    out, total = [], 0
    for text in texts:
        new, n = rx.subn(REDACTED, text)
        out.append(new)
        total += n
    return out, total
