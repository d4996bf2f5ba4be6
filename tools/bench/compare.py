"""``python -m tools.bench.compare``: the benchmarks of two revisions, side by side, in one run.

Each side is a tree: ``--base REV`` (default ``49c59d4``, the tree before the renovation)
and ``--head REV`` (default: this working tree, uncommitted changes included). A given
rev is checked out as a detached ``git worktree`` in a temporary directory, removed at
the end. Each bench module (:data:`tools.bench.figures.MODULES`) runs as
``python -m <module> --json`` with this interpreter (``sys.executable``),
``PYTHONPATH=<tree>`` and ``cwd=<tree>``: the tree's own bench driver, and through it the
tree's own server, core, contracts and engine worker (the server and the worker are
started as children that inherit that path). Before measuring, a probe imports each
package in each tree the same way and refuses to go on if any resolves outside it.

Rounds are interleaved (base, head, base, head, ...), module by module, so that drift on
a shared machine hits both sides alike. Each figure is the median over rounds (a check
is held only if it held in every round). The ratio is head/base for lower-is-better
figures and base/head for higher-is-better ones, so > 1.00 is always worse; a figure
worse by more than ``--threshold`` (5%) is marked, and the exit status is then 1.

Exit status: 0 nothing worse; 1 some figure worse; 2 a bench or a checkout failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

import msgspec

from .figures import CHECK, MODULES, Direction, Figure

__all__ = [
    "Comparison",
    "Row",
    "Tree",
    "bench_commands",
    "build_rows",
    "is_worse",
    "main",
    "oriented_ratio",
    "parse_args",
    "render_json",
    "render_text",
]

DEFAULT_BASE = "49c59d4"
_REPO = pathlib.Path(__file__).resolve().parents[2]
_DOCUMENT = "specs/20_stream_and_replay.md"
_PACKAGES = ("contracts", "orchestrator_core", "orchestratord", "worker_adapters", "tools.bench")
_PROBE = ("import importlib, json, sys; print(json.dumps({n: importlib.import_module(n).__file__ "
          "for n in sys.argv[1:]}))")


# -- the table (pure) ------------------------------------------------------------------


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
    """
    kinds: dict[str, Figure] = {}
    values: dict[str, tuple[list[float], list[float]]] = {}
    for side, runs in enumerate((base_runs, head_runs)):
        for run in runs:
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


class Comparison(msgspec.Struct, frozen=True):
    """Everything one comparison measured (``--json`` prints it).

    Attributes:
        base: the base tree.
        head: the head tree.
        rounds: rounds per side and module.
        threshold: the tolerated relative worsening (0.05 = 5%).
        commands: module -> the arguments each run got (after ``--json``).
        rows: every figure, module by module.
        worse: the names of the figures marked worse (``module: name``).
    """

    base: Tree
    head: Tree
    rounds: int
    threshold: float
    commands: dict[str, list[str]]
    rows: list[Row]
    worse: list[str]


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
    lines.append(f"head/base is oriented so that > 1.00 is worse (base/head for "
                 f"higher-is-better figures); {len(c.worse)} figure(s) worse by more than "
                 f"{pct}" + (": " + "; ".join(c.worse) if c.worse else ""))
    return "\n".join(lines)


def render_json(comparison: Comparison) -> str:
    """Pretty-printed JSON of the whole comparison."""
    return msgspec.json.format(msgspec.json.encode(comparison), indent=2).decode()


# -- the trees and the runs ------------------------------------------------------------


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(_REPO), *args], check=True, capture_output=True,
                         text=True)
    return out.stdout.strip()


def _env(tree: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def _probe(tree: Tree) -> Tree:
    """Import every package as the benches will; refuse a tree that imports from elsewhere.

    Raises:
        RuntimeError: a package resolved outside the tree.
    """
    root = pathlib.Path(tree.path)
    out = subprocess.run([sys.executable, "-c", _PROBE, *_PACKAGES], cwd=root, env=_env(root),
                         check=True, capture_output=True, text=True)
    imports: dict[str, str] = json.loads(out.stdout)
    for name, file in imports.items():
        if not pathlib.Path(file).resolve().is_relative_to(root.resolve()):
            raise RuntimeError(f"{tree.side} tree {root}: {name} imports from {file}")
    return msgspec.structs.replace(tree, imports=imports)


@contextlib.contextmanager
def _trees(base_rev: str, head_rev: str | None, tmp: pathlib.Path) -> Iterator[list[Tree]]:
    """The two trees; each given rev checked out detached under ``tmp``, removed after."""
    made: list[pathlib.Path] = []
    try:
        trees = []
        for side, rev in (("base", base_rev), ("head", head_rev)):
            if rev is None:
                dirty = "+dirty" if _git("status", "--porcelain") else ""
                trees.append(Tree(side=side, rev="working tree",
                                  commit=_git("rev-parse", "--short", "HEAD") + dirty,
                                  path=str(_REPO)))
                continue
            commit = _git("rev-parse", "--short", "--verify", f"{rev}^{{commit}}")
            path = tmp / side
            _git("worktree", "add", "--detach", "--quiet", str(path), commit)
            made.append(path)
            trees.append(Tree(side=side, rev=rev, commit=commit, path=str(path)))
        yield [_probe(t) for t in trees]
    finally:
        for path in made:
            try:
                _git("worktree", "remove", "--force", str(path))
            except subprocess.CalledProcessError:
                shutil.rmtree(path, ignore_errors=True)
                _git("worktree", "prune")


def _run(tree: Tree, module: str, args: list[str], timeout_s: float,
         log: pathlib.Path) -> list[Figure]:
    """One ``python -m <module> --json`` in ``tree``; its figures.

    Raises:
        RuntimeError: the run timed out, or printed no report (its stderr goes to ``log``).
    """
    root = pathlib.Path(tree.path)
    argv = [sys.executable, "-m", module, "--json", *args]
    with log.open("ab") as err:
        try:
            out = subprocess.run(argv, cwd=root, env=_env(root), stdout=subprocess.PIPE,
                                 stderr=err, stdin=subprocess.DEVNULL, timeout=timeout_s,
                                 check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{tree.side}: {module} ran over {timeout_s:g} s") from exc
    try:
        return MODULES[module].figures(out.stdout)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RuntimeError(f"{tree.side}: {module} exited {out.returncode} with no report "
                           f"({exc})") from exc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(
        prog="python -m tools.bench.compare",
        description="Run the benchmarks of two git revisions side by side, interleaved, and "
                    "print head/base ratios (> 1.00 is worse); exit 1 if any figure is "
                    "worse by more than the threshold.")
    p.add_argument("--base", default=DEFAULT_BASE,
                   help=f"base revision (default {DEFAULT_BASE}, before the renovation)")
    p.add_argument("--head", default=None, help="head revision (default: the working tree)")
    p.add_argument("--modules", nargs="+", choices=list(MODULES), default=list(MODULES),
                   help="bench modules to run (default: all)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per side, interleaved (default 3; 1 with --quick)")
    p.add_argument("--args", action="append", default=[], metavar="MODULE=ARGS",
                   help="extra arguments for one module, e.g. 'tools.bench=--no-engines'")
    p.add_argument("--quick", action="store_true",
                   help="smoke settings: mock engine, small loads, one round")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="tolerated relative worsening (default 0.05 = 5%%)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one bench run may take (default 1800)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1 or args.threshold < 0:
        p.error("--rounds must be at least 1 and --threshold at least 0")
    extra: dict[str, list[str]] = {}
    for item in args.args:
        module, sep, rest = item.partition("=")
        if not sep or module not in MODULES:
            p.error(f"--args {item!r}: expected MODULE=ARGS with MODULE one of {list(MODULES)}")
        extra.setdefault(module, []).extend(shlex.split(rest))
    args.extra = extra
    return args


def bench_commands(args: argparse.Namespace, document: pathlib.Path) -> dict[str, list[str]]:
    """The arguments each selected module runs with (after ``--json``), the same for both trees.

    Args:
        args: from :func:`parse_args`.
        document: the file ``tools.bench`` summarises (one copy, read by both trees).

    Returns:
        Module -> its ``--quick`` arguments, then its ``--args``, then the document flag
        unless ``--args`` gave one.
    """
    commands = {}
    for module in args.modules:
        spec = MODULES[module]
        cmd = [*(spec.quick_args if args.quick else ()), *args.extra.get(module, [])]
        if spec.document_flag is not None and spec.document_flag not in cmd:
            cmd += [spec.document_flag, str(document)]
        commands[module] = cmd
    return commands


def _compare(args: argparse.Namespace, tmp: pathlib.Path) -> Comparison:
    document = tmp / "document.md"
    shutil.copyfile(_REPO / _DOCUMENT, document)  # both trees summarise the same text
    commands = bench_commands(args, document)
    with _trees(args.base, args.head, tmp) as (base, head):
        for t in (base, head):
            print(f"{t.side}: {t.rev} = {t.commit} in {t.path}; orchestrator_core from "
                  f"{t.imports['orchestrator_core']}", file=sys.stderr, flush=True)
        runs: dict[tuple[str, str], list[list[Figure]]] = {}
        for r in range(args.rounds):
            for module, cmd in commands.items():
                for t in (base, head):
                    t0 = time.monotonic()
                    figures = _run(t, module, cmd, args.timeout, tmp / f"{t.side}.stderr")
                    runs.setdefault((module, t.side), []).append(figures)
                    print(f"round {r + 1}/{args.rounds}: {module} on {t.side} "
                          f"({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
    rows = [row for module in commands
            for row in build_rows(module, runs[module, "base"], runs[module, "head"],
                                  args.threshold)]
    return Comparison(base=base, head=head, rounds=args.rounds, threshold=args.threshold,
                      commands=commands, rows=rows,
                      worse=[f"{r.module}: {r.name}" for r in rows if r.worse])


def main(argv: list[str] | None = None) -> int:
    """Compare, print the table (or JSON).

    Returns:
        0 when no figure is worse by more than the threshold, 1 when one is, 2 when a
        checkout, the import probe or a bench run failed.
    """
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orchestratord-compare-") as tmp:
        try:
            comparison = _compare(args, pathlib.Path(tmp))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            print(f"compare failed: {exc} {detail}".rstrip(), file=sys.stderr)
            for log in sorted(pathlib.Path(tmp).glob("*.stderr")):
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print(f"--- last lines of {log.name}:", *tail, sep="\n", file=sys.stderr)
            return 2
    print(render_json(comparison) if args.json else render_text(comparison))
    return 1 if comparison.worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
