"""The client's recording methods (REC-7010, REC-7011): :class:`RecordingClient` is an
:class:`~orchestratord.client.OrchestratorClient` that also exports and imports
recordings."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from contracts.errors import ErrorEnvelope, error_from_envelope
from contracts.recordings import RecordingImported
from orchestratord.client import OrchestratorClient

__all__ = ["RecordingClient"]

_env = msgspec.json.Decoder(ErrorEnvelope)


class RecordingClient(OrchestratorClient):
    """An :class:`OrchestratorClient` with ``GET /v1/runs/{id}/recording`` and
    ``POST /v1/recordings``."""

    async def export_recording(self, run_id: str) -> AsyncIterator[bytes]:
        """Yield a Run's recording in chunks as the server streams it [REC-7010].

        Raises:
            OrchestratorError: the export was refused (NotFound, Conflict).
        """
        async with self._http.stream("GET", f"/v1/runs/{run_id}/recording",
                                     timeout=None) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise error_from_envelope(_env.decode(resp.content))
            async for chunk in resp.aiter_bytes():
                yield chunk

    async def recording_bytes(self, run_id: str) -> bytes:
        """The whole recording of a Run (:meth:`export_recording`)."""
        return b"".join([chunk async for chunk in self.export_recording(run_id)])

    async def import_recording(self, data: bytes) -> RecordingImported:
        """``POST /v1/recordings`` [REC-7011].

        Raises:
            InvalidParams: the file was refused; ``data["line"]`` names the line.
        """
        resp = await self._http.post("/v1/recordings", content=data, timeout=None,
                                     headers={"content-type": "application/x-ndjson"})
        if resp.status_code >= 400:
            raise error_from_envelope(_env.decode(resp.content))
        return msgspec.json.decode(resp.content, type=RecordingImported)
