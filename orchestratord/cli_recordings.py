"""``orchestratord runs export|import|diff|verify``: recordings from the command line
(REC-7030, REC-7031, specs/95_recordings.md).

Every command talks to a server over HTTP through the project's client
(:class:`~orchestratord.client_recordings.RecordingClient`), never to a database:
``--url`` and ``--token`` (or ``ORCHESTRATORD_URL`` and ``ORCHESTRATORD_TOKEN``). Output is
for people (rich tables and a progress bar, on stderr for the bar), or one JSON document
on stdout with ``--json``. Exit status: 0 on success, 1 when ``diff`` finds a divergence
or ``verify`` refuses, 2 for a usage or server error.

:func:`add_recording_commands` attaches the subcommands to the ``runs`` group that
:mod:`orchestratord.cli` creates; each sets ``handler`` (``args -> exit status``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from contracts.errors import InvalidParams, OrchestratorError
from orchestrator_core.recording_diff import Divergence, first_divergence
from orchestrator_core.recordings import Recording, StepLine, read_recording
from orchestratord.client_recordings import RecordingClient

__all__ = ["add_recording_commands", "make_client", "strict_audit"]

DEFAULT_URL = "http://127.0.0.1:8787"
_enc = msgspec.json.Encoder()


def make_client(args: argparse.Namespace) -> RecordingClient:
    """The client of ``--url`` and ``--token`` (or their environment variables)."""
    return RecordingClient(args.url or os.environ.get("ORCHESTRATORD_URL", DEFAULT_URL),
                           token=args.token or os.environ.get("ORCHESTRATORD_TOKEN"),
                           timeout_s=120.0)


def _out(args: argparse.Namespace) -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def _print_json(value: Any) -> None:
    sys.stdout.write(_enc.encode(value).decode() + "\n")


def _fail(args: argparse.Namespace, err: OrchestratorError, status: int = 2) -> int:
    """Report a refusal: its envelope with ``--json``, else a line on stderr."""
    if args.json:
        _print_json({"ok": False, "error": err.envelope()})
    else:
        where = f" (line {err.data['line']})" if err.data and "line" in err.data else ""
        Console(file=sys.stderr).print(f"[red]{err.code}[/red]{where}: {err.message}")
    return status


def _run(args: argparse.Namespace,
         body: Callable[[RecordingClient], Awaitable[int]]) -> int:
    async def main() -> int:
        client = make_client(args)
        try:
            return await body(client)
        finally:
            await client.aclose()
    try:
        return asyncio.run(main())
    except OrchestratorError as err:
        return _fail(args, err)


# -- export --------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    async def body(client: RecordingClient) -> int:
        target = pathlib.Path(args.output) if args.output else None
        chunks: list[bytes] = []
        with Progress(TextColumn("export {task.fields[run]}"), BarColumn(), DownloadColumn(),
                      console=Console(file=sys.stderr), disable=args.json or target is None,
                      transient=False) as bar:
            task = bar.add_task("export", run=args.run_id, total=None)
            async for chunk in client.export_recording(args.run_id):
                chunks.append(chunk)
                bar.advance(task, len(chunk))
        data = b"".join(chunks)
        if target is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return 0
        target.write_bytes(data)
        trailer = msgspec.json.decode(data.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        summary = {"run_id": args.run_id, "file": str(target), "bytes": len(data),
                   "lines": data.count(b"\n"), "root_hash": trailer.get("root_hash")}
        if args.json:
            _print_json(summary)
        else:
            _out(args).print(f"exported {args.run_id} to {target}: {len(data)} bytes, "
                             f"{summary['lines']} lines, root {summary['root_hash']}")
        return 0
    return _run(args, body)


# -- import --------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    data = pathlib.Path(args.file).read_bytes()

    async def body(client: RecordingClient) -> int:
        imported = await client.import_recording(data)
        if args.json:
            _print_json(imported)
            return 0
        table = Table("run_id", "flow_id", "steps", "root_hash", "recorded_run_id",
                      title=f"imported {args.file}")
        table.add_row(imported.run_id, imported.flow_id, str(imported.steps),
                      imported.root_hash, imported.recorded_run_id)
        _out(args).print(table)
        return 0
    return _run(args, body)


# -- diff ----------------------------------------------------------------------------


def _file(source: str) -> bytes | None:
    """The bytes of the file ``source`` names, or None when it names none (a run id)."""
    path = pathlib.Path(source)
    return path.read_bytes() if path.is_file() else None


async def _load(client: RecordingClient, source: str, data: bytes | None) -> Recording:
    """A file's recording, or the recording of the Run with that id (exported)."""
    return read_recording(data if data is not None else await client.recording_bytes(source))


def _show_divergence(args: argparse.Namespace, found: Divergence | None) -> int:
    if args.json:
        _print_json({"equal": found is None, "divergence": found})
        return 0 if found is None else 1
    out = _out(args)
    if found is None:
        out.print("the recordings agree")
        return 0
    table = Table("", "", title="first divergence", show_header=False)
    rows = {"step": found.step, "client_token": found.client_token, "field": found.field,
            "frame": found.frame, "token index": found.index, "expected": found.expected,
            "actual": found.actual, "context": found.context}
    for key, value in rows.items():
        if value is not None:
            table.add_row(key, _short(value), style="bold" if key == "field" else None)
    out.print(table)
    return 1


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else _enc.encode(value).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def _diff(args: argparse.Namespace) -> int:
    files = _file(args.a), _file(args.b)

    async def body(client: RecordingClient) -> int:
        a, b = await _load(client, args.a, files[0]), await _load(client, args.b, files[1])
        return _show_divergence(args, first_divergence(a, b))
    return _run(args, body)


# -- verify --------------------------------------------------------------------------


def _submission(line: StepLine) -> dict[str, Any]:
    """The submission a recorded Step was made with (its stored input and placement)."""
    body: dict[str, Any] = {"type": line.step.type, "client_token": line.step.client_token,
                            "input": line.step.input}
    if line.step.placement is not None:
        body["placement"] = line.step.placement
    return body


async def strict_audit(client: RecordingClient, data: bytes) -> dict[str, Any]:
    """Import a recording and strict-replay every Step on the server's live pool
    [REC-7031].

    Returns:
        ``{"run_id": the strict_replay Run, "reproduced": bool, "steps": [{"step",
        "client_token", "reproduced", "error"?}]}``; ``error`` is the envelope of the
        Step's refusal or error frame (``REPLAY_DIVERGED`` with the index, expected and
        actual token; ``DETERMINISM_INPUTS_DIFFER`` listing the fields).

    Raises:
        OrchestratorError: the import or the Run was refused.
    """
    rec = read_recording(data)
    imported = await client.import_recording(data)
    run_body = rec.header.run.body
    run = await client.create_run(imported.flow_id, mode="strict_replay",
                                  replay_of=imported.run_id, policy=run_body.get("policy", {}),
                                  budgets=run_body.get("budgets", {}))
    steps = []
    for ordinal, line in enumerate(rec.steps):
        entry: dict[str, Any] = {"step": ordinal, "client_token": line.step.client_token}
        try:
            result = await client.run_step(run.run_id, _submission(line))
            terminal = result.terminal
            entry["reproduced"] = terminal.event == "end"
            if terminal.event != "end":
                entry["error"] = terminal.json()
        except OrchestratorError as err:
            entry["reproduced"] = False
            entry["error"] = msgspec.to_builtins(err.envelope())
        steps.append(entry)
    return {"run_id": run.run_id, "reproduced": all(s["reproduced"] for s in steps),
            "steps": steps}


def _verify(args: argparse.Namespace) -> int:
    data = pathlib.Path(args.file).read_bytes()
    try:
        rec = read_recording(data)
    except InvalidParams as err:
        return _fail(args, err, status=1)
    summary = {"ok": True, "format": rec.header.format, "run_id": rec.header.run.run_id,
               "steps": rec.trailer.steps, "frames": rec.trailer.frames,
               "facts": rec.trailer.facts, "checkpoints": rec.trailer.checkpoints,
               "root_hash": rec.trailer.root_hash}
    if not args.strict:
        if args.json:
            _print_json(summary)
        else:
            table = Table("field", "value", title=f"{args.file}: every hash checks")
            for key, value in summary.items():
                table.add_row(key, str(value))
            _out(args).print(table)
        return 0

    async def body(client: RecordingClient) -> int:
        audit = await strict_audit(client, data)
        if args.json:
            _print_json({**summary, "strict": audit})
        else:
            table = Table("step", "client_token", "reproduced", "error",
                          title=f"strict replay of {args.file} ({audit['run_id']})")
            for s in audit["steps"]:
                err = s.get("error") or {}
                table.add_row(str(s["step"]), s["client_token"],
                              "yes" if s["reproduced"] else "[red]no[/red]",
                              _short({k: err.get(k) for k in ("code", "data")}) if err else "")
            _out(args).print(table)
        return 0 if audit["reproduced"] else 1
    return _run(args, body)


# -- registration --------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"server URL (env ORCHESTRATORD_URL; {DEFAULT_URL})")
    common.add_argument("--token", help="bearer token (env ORCHESTRATORD_TOKEN)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    return common


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Attach this module's commands to the shared ``runs`` group (see
    :mod:`orchestratord.cli`)."""
    add_recording_commands(groups["runs"])


def add_recording_commands(runs: Any) -> None:
    """Attach ``export``, ``import``, ``diff`` and ``verify`` to the ``runs`` group.

    Args:
        runs: the group's ``argparse`` subparsers (``add_subparsers()`` of ``runs``).
    """
    common = _common()
    p = runs.add_parser("export", parents=[common], help="write a run's recording")
    p.add_argument("run_id")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.set_defaults(handler=_export)
    p = runs.add_parser("import", parents=[common], help="import a recording as a new run")
    p.add_argument("file")
    p.set_defaults(handler=_import)
    p = runs.add_parser("diff", parents=[common],
                        help="first divergence of two runs or two recordings")
    p.add_argument("a", help="a run id or a recording file (expected)")
    p.add_argument("b", help="a run id or a recording file (actual)")
    p.set_defaults(handler=_diff)
    p = runs.add_parser("verify", parents=[common], help="check a recording's hashes")
    p.add_argument("file")
    p.add_argument("--strict", action="store_true",
                   help="also import it and strict-replay it on the server's live pool")
    p.set_defaults(handler=_verify)
