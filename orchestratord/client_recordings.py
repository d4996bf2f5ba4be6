"""The async client with a chunked recording export (REC-7010), for large recordings
and the CLI's progress bar; the plain calls are in
:mod:`orchestratord.client_recording_calls`."""

from __future__ import annotations

from collections.abc import AsyncIterator

from orchestratord.client import OrchestratorClient
from orchestratord.client_calls import error_of
from orchestratord.client_recording_calls import export_recording

__all__ = ["RecordingClient"]


class RecordingClient(OrchestratorClient):
    """An :class:`OrchestratorClient` whose export also comes in chunks."""

    async def export_recording(self, run_id: str) -> AsyncIterator[bytes]:
        """Yield a Run's recording in chunks as the server streams it [REC-7010].

        Raises:
            OrchestratorError: the export was refused (NotFound, Conflict).
        """
        call = export_recording(run_id)
        async with self._http.stream("GET", call.path, timeout=None) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise error_of(resp)
            async for chunk in resp.aiter_bytes():
                yield chunk

    async def recording_bytes(self, run_id: str) -> bytes:
        """The whole recording of a Run [REC-7010]."""
        return await self.recording(run_id)
