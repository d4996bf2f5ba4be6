"""The comparison table of :mod:`tools.bench.compare`: rows, ratios, the >5% rule, output.

Pure: no process, no clock. A ratio is oriented so that > 1.00 is worse: head/base for a
lower-is-better figure, base/head for a higher-is-better one. Each side's value is the
median over its rounds; a check holds only if it held in every round.
"""

from __future__ import annotations

import shlex
import statistics
from collections.abc import Sequence

import msgspec

from .figures import CHECK, Direction, Figure

__all__ = [
    "Comparison",
    "Failure",
    "Row",
    "Tree",
    "build_rows",
    "is_worse",
    "oriented_ratio",
    "regressions",
    "render_json",
    "render_text",
]


def oriented_ratio(base: float, head: float, direction: Direction) -> float | None:
    """The change of a figure as a ratio where > 1.0 is worse.

    Args:
        base: the base tree's value.
        head: the head tree's value (same unit).
        direction: which way the figure improves.

    Returns:
        ``head / base`` (lower is better) or ``base / head`` (higher is better); None
        when either value is negative or the divisor is 0 (no ratio means anything).
    """
    num, den = (head, base) if direction is Direction.LOWER else (base, head)
    if num < 0 or den <= 0:
        return None
    return num / den


def is_worse(base: float, head: float, direction: Direction, threshold: float) -> bool:
    """True when head is worse than base by more than ``threshold``.

    A figure whose divisor is 0 is worse when the other side moved away from 0 the wrong
    way (a check that held in base and broke in head; a cost that was 0 and is not).

    Args:
        base: the base tree's value.
        head: the head tree's value.
        direction: which way the figure improves.
        threshold: the tolerated relative worsening, e.g. 0.05 for 5%.
    """
    num, den = (head, base) if direction is Direction.LOWER else (base, head)
    if num < 0 or den < 0:
        return False
    if den == 0:
        return num > 0
    return num / den > 1.0 + threshold


class Row(msgspec.Struct, frozen=True):
    """One figure of the comparison.

    Attributes:
        module: the bench module that printed it.
        name: the figure (see :class:`tools.bench.figures.Figure`).
        unit: its unit.
        direction: which way it improves.
        base: median over the base tree's rounds (None if its runs lacked the figure).
        head: median over the head tree's rounds (None likewise).
        ratio: :func:`oriented_ratio` of the medians, rounded to 0.0001 (None: n/a).
        worse: :func:`is_worse` of the medians.
        base_rounds: the base tree's value in each round, in order.
        head_rounds: the head tree's value in each round, in order.
    """

    module: str
    name: str
    unit: str
    direction: Direction
    base: float | None
    head: float | None
    ratio: float | None
    worse: bool
    base_rounds: list[float]
    head_rounds: list[float]


def _aggregate(values: Sequence[float], unit: str) -> float | None:
    if not values:
        return None
    return min(values) if unit == CHECK else float(statistics.median(values))


def build_rows(module: str, base_runs: Sequence[Sequence[Figure]],
               head_runs: Sequence[Sequence[Figure]], threshold: float) -> list[Row]:
    """Pair the figures of one module's rounds, side by side.

    Args:
        module: the bench module.
        base_runs: the base tree's figures, one list per round.
        head_runs: the head tree's figures, one list per round.
        threshold: the tolerated relative worsening (0.05 = 5%).

    Returns:
        One row per figure name, in the order first seen (base first); a figure only one
        side printed gets None on the other side, no ratio, and is not marked worse.

    Raises:
        ValueError: one run holds two figures of the same name.
    """
    kinds: dict[str, Figure] = {}
    values: dict[str, tuple[list[float], list[float]]] = {}
    for side, runs in enumerate((base_runs, head_runs)):
        for run in runs:
            names = [f.name for f in run]
            if len(set(names)) != len(names):
                raise ValueError(f"{module}: a figure name appears twice in one run: {names}")
            for f in run:
                kinds.setdefault(f.name, f)
                values.setdefault(f.name, ([], []))[side].append(f.value)
    rows = []
    for name, kind in kinds.items():
        b_vals, h_vals = values[name]
        base, head = _aggregate(b_vals, kind.unit), _aggregate(h_vals, kind.unit)
        ratio: float | None = None
        worse = False
        if base is not None and head is not None:
            ratio = oriented_ratio(base, head, kind.direction)
            worse = is_worse(base, head, kind.direction, threshold)
        rows.append(Row(module=module, name=name, unit=kind.unit, direction=kind.direction,
                        base=base, head=head,
                        ratio=round(ratio, 4) if ratio is not None else None,
                        worse=worse, base_rounds=b_vals, head_rounds=h_vals))
    return rows


class Tree(msgspec.Struct, frozen=True):
    """One side of the comparison.

    Attributes:
        side: ``base`` or ``head``.
        rev: what was asked for (``working tree`` for the checkout itself).
        commit: the commit checked out (``+dirty`` when the working tree has changes).
        path: the tree the benches ran in.
        imports: package -> the file it was imported from, with ``PYTHONPATH=path``.
    """

    side: str
    rev: str
    commit: str
    path: str
    imports: dict[str, str] = {}


class Failure(msgspec.Struct, frozen=True):
    """A bench run that printed no report and was run again (``--retries``).

    Attributes:
        round: the round, from 1.
        module: the bench module.
        side: ``base`` or ``head``.
        message: how it failed (exit status, the last line of its stderr).
    """

    round: int
    module: str
    side: str
    message: str


class Comparison(msgspec.Struct, frozen=True):
    """Everything one comparison measured (``--json`` prints it).

    Attributes:
        base: the base tree.
        head: the head tree.
        rounds: rounds per side and module.
        threshold: the tolerated relative worsening (0.05 = 5%).
        commands: module -> the arguments each run got (after ``--json``).
        rows: every figure, module by module.
        worse: :func:`regressions`; the comparison fails when it is not empty.
        failures: every failed run that was run again (``--retries``), in order.
    """

    base: Tree
    head: Tree
    rounds: int
    threshold: float
    commands: dict[str, list[str]]
    rows: list[Row]
    worse: list[str]
    failures: list[Failure] = []


def regressions(rows: Sequence[Row], failures: Sequence[Failure]) -> list[str]:
    """What makes a comparison fail: each figure marked worse, then each failed head run.

    Args:
        rows: from :func:`build_rows`.
        failures: the runs that failed and were run again.

    Returns:
        ``module: figure`` per row marked worse, then ``module: a failed head run in
        round N`` per head failure (the base survived what the head did not).
    """
    return [*(f"{r.module}: {r.name}" for r in rows if r.worse),
            *(f"{f.module}: a failed head run in round {f.round}" for f in failures
              if f.side == "head")]


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == CHECK:
        return "yes" if value >= 1.0 else "NO"
    if abs(value) >= 1000:
        return f"{value:,.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


def render_text(comparison: Comparison) -> str:
    """The table: figure, unit, base, head, head/base (> 1.00 is worse), mark.

    Args:
        comparison: the result.

    Returns:
        The header naming both trees and where each imported its core from, then one
        line per figure; a figure worse by more than the threshold ends in ``WORSE``.
    """
    c = comparison
    pct = f"{c.threshold * 100:g}%"
    lines = [f"orchestratord bench comparison: median of {c.rounds} interleaved round(s) "
             "per side (base, head, base, head, ...)"]
    for t in (c.base, c.head):
        core = t.imports.get("orchestrator_core", "?")
        lines.append(f"  {t.side:<5} {t.rev} = {t.commit}: {t.path}")
        lines.append(f"        orchestrator_core from {core}")
    for module, args in c.commands.items():
        lines.append(f"  python -m {module} --json {shlex.join(args)}".rstrip())
    lines += ["", f"{'figure':<46}{'unit':>9}{'base':>12}{'head':>12}{'head/base':>11}  mark"]
    module = ""
    for r in c.rows:
        if r.module != module:
            module = r.module
            lines.append(f"[{module}]")
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.3f}"
        mark = f"WORSE (> {pct})" if r.worse else ""
        lines.append(f"  {r.name:<44}{r.unit:>9}{_num(r.base, r.unit):>12}"
                     f"{_num(r.head, r.unit):>12}{ratio:>11}  {mark}".rstrip())
    lines.append("")
    lines += [f"failed and run again: round {f.round}, {f.module} on {f.side}: {f.message}"
              for f in c.failures]
    lines.append(f"head/base is oriented so that > 1.00 is worse (base/head for "
                 f"higher-is-better figures); {len(c.worse)} regression(s) (worse by more "
                 f"than {pct}, or a failed head run)" + ("".join(f"\n  {w}" for w in c.worse)))
    return "\n".join(lines)


def render_json(comparison: Comparison) -> str:
    """Pretty-printed JSON of the whole comparison."""
    return msgspec.json.format(msgspec.json.encode(comparison), indent=2).decode()
