"""Trace the requirement ids defined in ``specs/`` to the tests that claim them.

A requirement is defined by a Markdown list item that starts with its id in brackets::

    - [NERVE-4001] A Flow MUST be identified by its content.

A test claims a requirement by naming its id:

* in ``test_harness/features/**/*.feature``, as a Gherkin tag (``@NERVE-4001``);
* in ``test_harness/**/*.py``, anywhere in the source (a ``[NERVE-4001]`` in a docstring,
  a ``pytest.mark.req("NERVE-4001")``, ...).

The report lists every defined id with the spec line that defines it and the test files
that claim it, then the problems found. With ``--check`` the exit status is 1 when there
is any problem:

* an id defined in the specs that no test claims;
* an id named by a test that no spec defines;
* an id defined more than once;
* a defined id missing from the requirement index in ``specs/00_overview.md``.

Usage::

    python tools/spec_trace.py [--root DIR] [--check]

Test files that exercise this tool should build sample ids at run time rather than
spell them out, or the tool will count them as references.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PREFIXES",
    "Definition",
    "Trace",
    "build_trace",
    "feature_tag_ids",
    "find_problems",
    "format_report",
    "main",
    "parse_definitions",
    "reference_pattern",
]

DEFAULT_PREFIXES: tuple[str, ...] = ("NERVE", "STREAM", "POLICY", "PLACE", "REC", "OBS",
                                      "PG")
"""Id prefixes recognised in tests even before any spec defines one of them."""

SPECS_DIR = "specs"
TESTS_DIR = "test_harness"
FEATURES_DIR = "features"
INDEX_FILE = "00_overview.md"

_DEFINITION_RE = re.compile(r"^\s*[-*+]\s+\[(?P<id>[A-Z][A-Z0-9]*-\d{4})\]")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Definition:
    """Where a requirement id is defined.

    Attributes:
        req_id: the id, e.g. ``NERVE-4001``.
        path: the spec file, relative to the repository root.
        line: 1-based line number of the defining list item.
    """

    req_id: str
    path: Path
    line: int


@dataclass
class Trace:
    """Everything the report and the check need.

    Attributes:
        definitions: every definition found, in file and line order.
        coverage: id -> test files (relative to the root) that name it.
        indexed: ids that appear anywhere in the requirement index file.
        index_found: whether the index file exists.
    """

    definitions: list[Definition] = field(default_factory=list)
    coverage: dict[str, set[Path]] = field(default_factory=dict)
    indexed: set[str] = field(default_factory=set)
    index_found: bool = True

    @property
    def defined(self) -> dict[str, list[Definition]]:
        """Id -> its definitions, in the order first defined (more than one is a fault)."""
        out: dict[str, list[Definition]] = {}
        for d in self.definitions:
            out.setdefault(d.req_id, []).append(d)
        return out

    @property
    def uncovered(self) -> list[str]:
        """Defined ids that no test names, sorted."""
        return sorted(i for i in self.defined if not self.coverage.get(i))

    @property
    def undefined(self) -> dict[str, set[Path]]:
        """Ids named by tests but defined by no spec, with the files naming them."""
        defined = self.defined
        return {i: files for i, files in sorted(self.coverage.items()) if i not in defined}

    @property
    def duplicates(self) -> dict[str, list[Definition]]:
        """Ids defined more than once."""
        return {i: ds for i, ds in sorted(self.defined.items()) if len(ds) > 1}

    @property
    def unindexed(self) -> list[str]:
        """Defined ids that the requirement index does not mention, sorted."""
        return sorted(i for i in self.defined if i not in self.indexed)


def _id_sort_key(req_id: str) -> tuple[str, int]:
    prefix, _, number = req_id.rpartition("-")
    return prefix, int(number)


def _outside_fences(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` for lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(lines, start=1):
        if _FENCE_RE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def parse_definitions(text: str, path: Path) -> list[Definition]:
    """Find the requirement definitions in one Markdown document.

    Args:
        text: the document.
        path: the path to record on each definition.

    Returns:
        One :class:`Definition` per list item that starts with ``[ID]``; list items
        inside fenced code blocks are ignored.
    """
    found: list[Definition] = []
    for number, line in _outside_fences(text.splitlines()):
        match = _DEFINITION_RE.match(line)
        if match:
            found.append(Definition(match["id"], path, number))
    return found


def reference_pattern(prefixes: Iterable[str]) -> re.Pattern[str]:
    """Build the regex that finds requirement ids with the given prefixes.

    Args:
        prefixes: id prefixes such as ``NERVE``.

    Returns:
        A pattern matching ``<PREFIX>-<4 digits>`` as a whole word.
    """
    alternatives = "|".join(re.escape(p) for p in sorted(set(prefixes), key=lambda p: -len(p)))
    return re.compile(rf"(?<![A-Za-z0-9_])(?:{alternatives})-\d{{4}}(?!\d)")


def feature_tag_ids(text: str, pattern: re.Pattern[str]) -> set[str]:
    """Ids used as Gherkin tags in a ``.feature`` file.

    Only tag lines count (lines whose first non-blank character is ``@``); an id in a
    step, a description or a comment is not a claim.

    Args:
        text: the feature file.
        pattern: from :func:`reference_pattern`.

    Returns:
        The ids found in tags.
    """
    ids: set[str] = set()
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("@"):
            continue
        tags = stripped.split(" #", 1)[0]
        for token in tags.split():
            if token.startswith("@"):
                ids.update(pattern.findall(token))
    return ids


def _files(directory: Path, glob: str) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob(glob) if p.is_file())


def build_trace(root: Path) -> Trace:
    """Collect definitions, test references and the index of a repository.

    Args:
        root: the repository root (holding ``specs/`` and ``test_harness/``).

    Returns:
        The :class:`Trace`; paths in it are relative to ``root``.
    """
    specs = root / SPECS_DIR
    trace = Trace()
    for spec in _files(specs, "*.md"):
        trace.definitions.extend(
            parse_definitions(spec.read_text(encoding="utf-8"), spec.relative_to(root)))

    prefixes = set(DEFAULT_PREFIXES) | {d.req_id.rpartition("-")[0] for d in trace.definitions}
    pattern = reference_pattern(prefixes)

    def claim(ids: Iterable[str], path: Path) -> None:
        for req_id in ids:
            trace.coverage.setdefault(req_id, set()).add(path.relative_to(root))

    tests = root / TESTS_DIR
    for feature in _files(tests / FEATURES_DIR, "*.feature"):
        claim(feature_tag_ids(feature.read_text(encoding="utf-8"), pattern), feature)
    for module in _files(tests, "*.py"):
        claim(pattern.findall(module.read_text(encoding="utf-8")), module)

    index = specs / INDEX_FILE
    trace.index_found = index.is_file()
    if trace.index_found:
        trace.indexed = set(pattern.findall(index.read_text(encoding="utf-8")))
    return trace


def _paths(paths: Iterable[Path]) -> str:
    return ", ".join(sorted(p.as_posix() for p in paths))


def find_problems(trace: Trace) -> list[str]:
    """Every reason ``--check`` fails, one human-readable line each.

    Args:
        trace: from :func:`build_trace`.

    Returns:
        The problems, empty when the trace is clean.
    """
    problems: list[str] = []
    if not trace.definitions:
        problems.append(f"no requirement is defined under {SPECS_DIR}/")
    for req_id in sorted(trace.uncovered, key=_id_sort_key):
        problems.append(f"{req_id}: defined but no test claims it")
    for req_id, files in sorted(trace.undefined.items(), key=lambda kv: _id_sort_key(kv[0])):
        problems.append(f"{req_id}: named by {_paths(files)} but defined by no spec")
    for req_id, defs in trace.duplicates.items():
        where = ", ".join(f"{d.path.as_posix()}:{d.line}" for d in defs)
        problems.append(f"{req_id}: defined {len(defs)} times ({where})")
    if not trace.index_found:
        problems.append(f"{SPECS_DIR}/{INDEX_FILE} not found")
    else:
        for req_id in sorted(trace.unindexed, key=_id_sort_key):
            problems.append(f"{req_id}: missing from the index in {SPECS_DIR}/{INDEX_FILE}")
    return problems


def format_report(trace: Trace) -> str:
    """Render the id -> defined-in -> covered-by table and a summary.

    Args:
        trace: from :func:`build_trace`.

    Returns:
        The report text, ending with a newline.
    """
    defined = trace.defined
    rows = [("id", "defined in", "covered by")]
    for req_id in sorted(defined, key=_id_sort_key):
        first = defined[req_id][0]
        files = trace.coverage.get(req_id, set())
        rows.append((req_id, f"{first.path.name}:{first.line}",
                     _paths(files) if files else "-- none --"))
    width_id = max(len(r[0]) for r in rows)
    width_def = max(len(r[1]) for r in rows)
    lines = [f"{a:<{width_id}}  {b:<{width_def}}  {c}".rstrip() for a, b, c in rows]
    lines.insert(1, f"{'-' * width_id}  {'-' * width_def}  {'-' * 10}")

    covered = len(defined) - len(trace.uncovered)
    lines.append("")
    lines.append(f"{len(defined)} requirement(s) defined, {covered} covered, "
                 f"{len(trace.uncovered)} without coverage.")
    undefined = trace.undefined
    if undefined:
        lines.append("")
        lines.append("Named by tests but defined by no spec:")
        for req_id in sorted(undefined, key=_id_sort_key):
            lines.append(f"  {req_id}: {_paths(undefined[req_id])}")
    return "\n".join(lines) + "\n"


def _default_root() -> Path:
    return Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Print the trace report; with ``--check``, fail on any problem.

    Args:
        argv: command-line arguments without the program name (``sys.argv[1:]`` when
            None).

    Returns:
        0 when the report was printed (and, with ``--check``, nothing is wrong); 1 when
        ``--check`` found a problem; 2 when the specs directory does not exist.
    """
    parser = argparse.ArgumentParser(
        prog="spec_trace",
        description="Trace requirement ids in specs/ to the tests in test_harness/.")
    parser.add_argument("--root", type=Path, default=_default_root(),
                        help="repository root (default: the parent of tools/)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on uncovered, undefined, duplicate or unindexed ids")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    if not (root / SPECS_DIR).is_dir():
        print(f"spec_trace: {root / SPECS_DIR} is not a directory", file=sys.stderr)
        return 2

    trace = build_trace(root)
    sys.stdout.write(format_report(trace))
    if not args.check:
        return 0
    problems = find_problems(trace)
    if problems:
        print(f"\nspec_trace --check: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print("\nspec_trace --check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
