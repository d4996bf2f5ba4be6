"""The clients' recording calls (REC-7010, REC-7011), as Calls of the sans-IO core
(NERVE-4110): both clients send them as ``recording`` and ``import_recording``."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from contracts.recordings import RecordingImported
from orchestratord.client_calls import Call

__all__ = ["NDJSON", "export_recording", "import_recording"]

NDJSON = "application/x-ndjson"
"""The media type of a recording file."""
_imported = msgspec.json.Decoder(RecordingImported)


def _content(resp: httpx.Response) -> bytes:
    return resp.content


def _imported_of(resp: httpx.Response) -> RecordingImported:
    return _imported.decode(resp.content)


def export_recording(run_id: str) -> Call[bytes]:
    """``GET /v1/runs/{run_id}/recording``: the Run's whole recording, as the bytes of
    its JSON Lines file (REC-7010). Sent, it raises ``NotFound`` (unknown, or another
    tenant's) or ``Conflict`` (a Step is not finished)."""
    return Call("GET", f"/v1/runs/{quote(run_id, safe='')}/recording", _content)


def import_recording(data: bytes) -> Call[RecordingImported]:
    """``POST /v1/recordings``: import a recording file as a new Run (REC-7011). Not
    idempotent (each import is a new Run). Sent, it raises ``InvalidParams`` for a
    refused file; ``data["line"]`` names the line."""
    return Call("POST", "/v1/recordings", _imported_of, idempotent=False, content=data,
                content_type=NDJSON)
