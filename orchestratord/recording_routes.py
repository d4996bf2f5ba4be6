"""The recording routes: a Run's portable recording out, and a recording in (REC-7010,
REC-7011, specs/95_recordings.md).

``GET /v1/runs/{run_id}/recording`` streams the recording as ``application/x-ndjson``,
one line per write. ``POST /v1/recordings`` takes a recording as the body
(``application/x-ndjson``, at most :data:`~orchestrator_core.recordings.MAX_RECORDING_BYTES`)
and checks it line by line as it arrives, each line bounded by
:data:`~orchestrator_core.recordings.MAX_LINE_BYTES`; only a whole, valid recording is
stored, in one transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath
from litestar.response import Stream

from contracts.errors import UnsupportedMediaType
from contracts.recordings import RecordingImported
from orchestrator_core.recording_io import export_run, import_recording
from orchestrator_core.recordings import MAX_LINE_BYTES, MAX_RECORDING_BYTES, RecordingReader
from orchestrator_core.service import DEFAULT_TENANT, SERVER_VERSION, Orchestrator

__all__ = ["NDJSON", "RECORDING_ROUTES", "export_recording", "import_recording_route"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]

NDJSON = "application/x-ndjson"
"""The media type of a recording (JSON Lines)."""
_ACCEPTED = frozenset({NDJSON, "application/jsonl", "application/x-jsonlines"})


@dataclass
class _RecordingBody(Operation):
    """The import's operation, with its body documented: Litestar sees no typed body, the
    route reads the stream itself."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="A recording (`orchestratord.recording/1.1` or `/1`, JSON Lines; "
                        "specs/95_recordings.md), at most 256 MiB, each line at most 16 MiB.",
            content={NDJSON: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))})


async def _each(lines: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The lines, produced on the event loop (the store is not shared with threads)."""
    for line in lines:
        yield line


@get("/v1/runs/{run_id:str}/recording", media_type=NDJSON)
async def export_recording(run_id: FromPath[str], orch: Orch, tenant: Tenant) -> Stream:
    """A Run's portable recording, streamed line by line [REC-7010].

    Deterministic bytes: exporting the same Run twice gives the same file. 404 for
    another tenant's Run; 409 while a Step of the Run has not finished.
    """
    orch.log.flush()
    lines = export_run(orch.store, run_id, tenant, SERVER_VERSION)
    return Stream(_each(lines), media_type=NDJSON,
                  headers={"Content-Disposition": f'attachment; filename="{run_id}.jsonl"'})


_BATCH_BYTES = 1 << 20
"""Complete lines handed to the checking thread at once (bytes, at least)."""


def _feed(reader: RecordingReader, lines: list[bytes]) -> None:
    for line in lines:
        reader.feed(line)


async def _read_lines(request: Request[Any, Any, Any], reader: RecordingReader) -> None:
    """Feed the body to ``reader`` one line at a time as it arrives; a line longer than
    the bound is refused before it is buffered whole.

    The lines are checked (decoded, re-encoded canonically and hashed: up to 16 MiB a
    line) in a worker thread, a batch of at least 1 MiB at a time, so that an import
    never holds the event loop that serves every other stream (REC-7011)."""
    pending = bytearray()
    batch: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            batch.append(bytes(pending[start:end]))
            size += end - start
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_LINE_BYTES:
            batch.append(bytes(pending[:MAX_LINE_BYTES + 1]))
            size = _BATCH_BYTES
        if size >= _BATCH_BYTES:
            await anyio.to_thread.run_sync(_feed, reader, batch)
            batch, size = [], 0
    if pending:
        batch.append(bytes(pending))
    if batch:
        await anyio.to_thread.run_sync(_feed, reader, batch)


@post("/v1/recordings", status_code=201, request_max_body_size=MAX_RECORDING_BYTES,
      operation_class=_RecordingBody)
async def import_recording_route(request: Request[Any, Any, Any], orch: Orch,
                                 tenant: Tenant) -> RecordingImported:
    """Import a recording as a new ``record`` Run of the caller's tenant [REC-7011].

    Answers 201 ``{run_id, flow_id, steps, root_hash, recorded_run_id}``. A tampered,
    truncated or oversized file is a 400 ``INVALID_PARAMS`` whose ``data`` names the
    ``line`` (and the ``field``), and nothing is stored; a body that is not
    ``application/x-ndjson`` is 415.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _ACCEPTED:
        raise UnsupportedMediaType(f"a recording is sent as Content-Type: {NDJSON}",
                                   data={"content_type": media[:128]})
    reader = RecordingReader()
    await _read_lines(request, reader)
    rec = reader.finish()
    return import_recording(
        orch.store, rec, tenant, DEFAULT_TENANT, orch.clock,
        lambda fs: orch.sandboxes.validate_fs_policy(fs, tenant) if fs.roots else None)


RECORDING_ROUTES = [export_recording, import_recording_route]
"""The handlers to register on the app."""
