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

A bench run that prints no report stops the comparison (exit 2), unless ``--retries N``
lets it run again: every failure is then listed, and a failure on the head side counts
as a regression (the base survived what the head did not).

Exit status: 0 nothing worse; 1 some figure worse (or a head run failed and was run
again); 2 a bench, a checkout or the import probe failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import msgspec

from .figures import MODULES, Figure
from .table import (
    Comparison,
    Failure,
    Tree,
    build_rows,
    regressions,
    render_json,
    render_text,
)

__all__ = ["DEFAULT_BASE", "BenchFailed", "bench_commands", "main", "parse_args"]

DEFAULT_BASE = "49c59d4"
_REPO = pathlib.Path(__file__).resolve().parents[2]
_DOCUMENT = "specs/20_stream_and_replay.md"
_PACKAGES = ("contracts", "orchestrator_core", "orchestratord", "worker_adapters", "tools.bench")
_PROBE = ("import importlib, json, sys; print(json.dumps({n: importlib.import_module(n).__file__ "
          "for n in sys.argv[1:]}))")


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


class BenchFailed(RuntimeError):
    """A bench run printed no report.

    Attributes:
        log: the file holding the run's stderr.
    """

    def __init__(self, message: str, log: pathlib.Path) -> None:
        super().__init__(message)
        self.log = log

    def tail(self, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of the run's stderr."""
        return self.log.read_text(errors="replace").splitlines()[-lines:]


def _run(tree: Tree, module: str, args: list[str], timeout_s: float,
         log: pathlib.Path) -> list[Figure]:
    """One ``python -m <module> --json`` in ``tree``; its figures.

    Raises:
        BenchFailed: the run timed out, or printed no report (its stderr is in ``log``).
    """
    root = pathlib.Path(tree.path)
    argv = [sys.executable, "-m", module, "--json", *args]
    with log.open("wb") as err:
        try:
            out = subprocess.run(argv, cwd=root, env=_env(root), stdout=subprocess.PIPE,
                                 stderr=err, stdin=subprocess.DEVNULL, timeout=timeout_s,
                                 check=False)
        except subprocess.TimeoutExpired as exc:
            raise BenchFailed(f"ran over {timeout_s:g} s", log) from exc
    try:
        return MODULES[module].figures(out.stdout)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        why = f"no report ({exc})" if out.stdout.strip() else "no report"
        last = next(iter(BenchFailed("", log).tail(1)), "")
        raise BenchFailed(f"exited {out.returncode} with {why}; last stderr line: {last}",
                          log) from exc


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
                   help="smoke settings: mock engine, small loads, one round (its figures "
                        "are too small to judge by: CPU is read in 10 ms ticks)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="tolerated relative worsening (default 0.05 = 5%%)")
    p.add_argument("--retries", type=int, default=0,
                   help="run a failed bench run again up to N times (default 0); each "
                        "failure is listed, and one on the head counts as worse")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds one bench run may take (default 1800)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1 or args.threshold < 0 or args.retries < 0:
        p.error("--rounds must be at least 1, --threshold and --retries at least 0")
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


def _run_with_retries(tree: Tree, module: str, cmd: list[str], args: argparse.Namespace,
                      tmp: pathlib.Path, round_: int, failures: list[Failure]) -> list[Figure]:
    """:func:`_run`, again up to ``args.retries`` times; each failure is added to ``failures``.

    Raises:
        BenchFailed: the last attempt failed too.
    """
    for attempt in range(args.retries + 1):
        t0 = time.monotonic()
        log = tmp / f"{module}-{tree.side}-{round_}-{attempt}.stderr"
        label = f"round {round_}/{args.rounds}: {module} on {tree.side}"
        try:
            figures = _run(tree, module, cmd, args.timeout, log)
        except BenchFailed as exc:
            failures.append(Failure(round=round_, module=module, side=tree.side,
                                    message=str(exc)))
            print(f"{label} FAILED: {exc}", file=sys.stderr, flush=True)
            if attempt == args.retries:
                raise BenchFailed(f"{label}: {exc}", exc.log) from exc
            continue
        print(f"{label} ({time.monotonic() - t0:.1f} s)", file=sys.stderr, flush=True)
        return figures
    raise AssertionError("unreachable")


def _compare(args: argparse.Namespace, tmp: pathlib.Path) -> Comparison:
    document = tmp / "document.md"
    shutil.copyfile(_REPO / _DOCUMENT, document)  # both trees summarise the same text
    commands = bench_commands(args, document)
    with _trees(args.base, args.head, tmp) as (base, head):
        for t in (base, head):
            print(f"{t.side}: {t.rev} = {t.commit} in {t.path}; orchestrator_core from "
                  f"{t.imports['orchestrator_core']}", file=sys.stderr, flush=True)
        runs: dict[tuple[str, str], list[list[Figure]]] = {}
        failures: list[Failure] = []
        for r in range(args.rounds):
            for module, cmd in commands.items():
                for t in (base, head):
                    runs.setdefault((module, t.side), []).append(
                        _run_with_retries(t, module, cmd, args, tmp, r + 1, failures))
    rows = [row for module in commands
            for row in build_rows(module, runs[module, "base"], runs[module, "head"],
                                  args.threshold)]
    return Comparison(base=base, head=head, rounds=args.rounds, threshold=args.threshold,
                      commands=commands, rows=rows, worse=regressions(rows, failures),
                      failures=failures)


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
        except BenchFailed as exc:
            print(f"compare failed: {exc}", f"--- last lines of its stderr ({exc.log.name}):",
                  *exc.tail(), sep="\n", file=sys.stderr)
            return 2
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or ""
            print(f"compare failed: {exc} {detail}".rstrip(), file=sys.stderr)
            return 2
    print(render_json(comparison) if args.json else render_text(comparison))
    return 1 if comparison.worse else 0


if __name__ == "__main__":
    raise SystemExit(main())
