"""The built-in tools, run as ``python -m worker_adapters.builtin_tools <tool>``.

Each invocation reads one JSON document from stdin and writes one JSON document (and a
newline) to stdout with exit status 0. Bad input (not JSON, a missing, extra or
mistyped field, an unparsable path) is a one-line message on stderr and exit status 2.
:func:`worker_adapters.tools.default_tool_executors` configures one ``argv`` executor per
tool.

The tools:

* ``wc``: ``{"text": str}`` to ``{"lines", "words", "chars", "bytes"}``, counted like
  POSIX ``wc``: lines are newline characters, words are runs of non-whitespace, chars
  are code points and bytes are UTF-8 bytes.
* ``json_query``: ``{"document": any JSON, "path": str}`` to ``{"value", "found"}``.
  The path is a small strict language, parsed here (no ``eval``): ``a.b[0].c``. A bare
  or dotted name (``[A-Za-z_][A-Za-z0-9_-]*``) looks up an object key, ``[N]`` (N a
  non-negative decimal without leading zeros) a list index, and ``["any key"]`` (a JSON
  string literal) an object key of any spelling. The empty path is the document itself.
  A path that does not resolve gives ``{"value": null, "found": false}``.
* ``sha256``: ``{"text": str}`` to ``{"sha256": <hex digest of its UTF-8 bytes>}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec

__all__ = [
    "ARG_SCHEMAS",
    "TOOLS",
    "BadInput",
    "json_query",
    "main",
    "parse_path",
    "resolve_path",
    "run",
    "sha256",
    "wc",
]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_INDEX = re.compile(r"0|[1-9][0-9]*")
_STRING = json.JSONDecoder()

_T = TypeVar("_T")


class BadInput(Exception):
    """The tool's input is not what it accepts (exit status 2)."""


class _TextInput(msgspec.Struct, forbid_unknown_fields=True):
    text: str


class _QueryInput(msgspec.Struct, forbid_unknown_fields=True):
    document: Any
    path: str


def _decode(data: bytes, type_: type[_T]) -> _T:
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
        raise BadInput(str(exc)) from exc


def wc(data: bytes) -> dict[str, int]:
    """Count lines, words, characters and UTF-8 bytes of ``text``.

    Args:
        data: the JSON input ``{"text": str}``.

    Returns:
        ``{"lines", "words", "chars", "bytes"}``, as POSIX ``wc`` counts them.

    Raises:
        BadInput: the input is not ``{"text": str}``.
    """
    text = _decode(data, _TextInput).text
    return {"lines": text.count("\n"), "words": len(text.split()), "chars": len(text),
            "bytes": len(text.encode("utf-8"))}


def sha256(data: bytes) -> dict[str, str]:
    """Hash the UTF-8 bytes of ``text``.

    Args:
        data: the JSON input ``{"text": str}``.

    Returns:
        ``{"sha256": <64 lowercase hex digits>}``.

    Raises:
        BadInput: the input is not ``{"text": str}``.
    """
    text = _decode(data, _TextInput).text
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def json_query(data: bytes) -> dict[str, Any]:
    """Look up ``path`` in ``document``.

    Args:
        data: the JSON input ``{"document": any JSON, "path": str}``.

    Returns:
        ``{"value": <the value at path>, "found": true}``, or
        ``{"value": null, "found": false}`` when the path does not resolve.

    Raises:
        BadInput: the input has the wrong shape or the path does not parse.
    """
    query = _decode(data, _QueryInput)
    found, value = resolve_path(query.document, parse_path(query.path))
    return {"value": value, "found": found}


def parse_path(path: str) -> list[str | int]:
    """Parse a path such as ``a.b[0]["c d"]`` into its keys and indices.

    Args:
        path: the path (grammar in the module docstring).

    Returns:
        One ``str`` (object key) or ``int`` (list index) per segment.

    Raises:
        BadInput: the path does not parse; the message gives the character offset.
    """
    segments: list[str | int] = []
    pos = 0
    while pos < len(path):
        if path[pos] == "[":
            segment, pos = _bracket(path, pos + 1)
        else:
            if segments:
                if path[pos] != ".":
                    raise _path_error(path, pos, "expected '.' or '['")
                pos += 1
            match = _NAME.match(path, pos)
            if match is None:
                raise _path_error(path, pos, "expected a name")
            segment, pos = match.group(), match.end()
        segments.append(segment)
    return segments


def _bracket(path: str, pos: int) -> tuple[str | int, int]:
    """Parse the inside of ``[...]`` from ``pos``; return the segment and the offset
    after the closing bracket."""
    segment: str | int
    if path.startswith('"', pos):
        try:
            segment, end = _STRING.raw_decode(path, pos)
        except json.JSONDecodeError as exc:
            raise _path_error(path, pos, f"bad quoted key: {exc.msg}") from exc
    else:
        match = _INDEX.match(path, pos)
        if match is None:
            raise _path_error(path, pos, "expected an index or a quoted key")
        segment, end = int(match.group()), match.end()
    if not path.startswith("]", end):
        raise _path_error(path, end, "expected ']'")
    return segment, end + 1


def _path_error(path: str, pos: int, why: str) -> BadInput:
    return BadInput(f"invalid path {path!r} at offset {pos}: {why}")


def resolve_path(document: Any, segments: Sequence[str | int]) -> tuple[bool, Any]:
    """Follow ``segments`` from ``document``: keys into objects, indices into lists.

    Args:
        document: a decoded JSON value.
        segments: the output of :func:`parse_path`.

    Returns:
        ``(True, value)`` when every segment resolves, else ``(False, None)``.
    """
    node = document
    for segment in segments:
        if isinstance(segment, int):
            if not isinstance(node, list) or segment >= len(node):
                return False, None
            node = node[segment]
        else:
            if not isinstance(node, dict) or segment not in node:
                return False, None
            node = node[segment]
    return True, node


TOOLS: Mapping[str, Callable[[bytes], dict[str, Any]]] = {
    "json_query": json_query,
    "sha256": sha256,
    "wc": wc,
}
"""Every built-in tool by name: raw JSON input in, the result object out."""

_TEXT = {"type": "object", "required": ["text"], "additionalProperties": False,
         "properties": {"text": {"type": "string"}}}
ARG_SCHEMAS: Mapping[str, dict[str, Any]] = {
    "json_query": {"type": "object", "required": ["document", "path"],
                   "additionalProperties": False,
                   "properties": {"document": {}, "path": {"type": "string"}}},
    "sha256": _TEXT,
    "wc": _TEXT,
}
"""The JSON Schema of each built-in tool's input, as the module docstring describes it
(advertised by ``GET /v1/capabilities``, NERVE-4076)."""


def run(tool: str, data: bytes) -> bytes:
    """Run ``tool`` on the JSON ``data``; return the JSON output line.

    Raises:
        BadInput: unknown tool or bad input.
    """
    if tool not in TOOLS:
        raise BadInput(f"unknown tool {tool!r}; expected one of {', '.join(sorted(TOOLS))}")
    return msgspec.json.encode(TOOLS[tool](data)) + b"\n"


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: one tool name argument, JSON on stdin, JSON on stdout.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 2 on bad usage or bad input.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        print(f"usage: python -m worker_adapters.builtin_tools {{{'|'.join(sorted(TOOLS))}}}",
              file=sys.stderr)
        return 2
    try:
        output = run(args[0], sys.stdin.buffer.read())
    except BadInput as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(output)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
