"""Wire types of the recording routes (REC-7011, specs/95_recordings.md).

The recording itself is JSON Lines, not one JSON document: its line types are in
:mod:`orchestrator_core.recordings`.
"""

from __future__ import annotations

import msgspec

__all__ = ["RecordingImported"]


class RecordingImported(msgspec.Struct, frozen=True):
    """The answer of ``POST /v1/recordings`` (201).

    Attributes:
        run_id: the new ``record`` Run holding the recording.
        flow_id: its Flow in the importing tenant.
        steps: how many Steps it holds.
        root_hash: the recording's root hash (its trailer's).
        recorded_run_id: the Run's id on the server that exported it.
    """

    run_id: str
    flow_id: str
    steps: int
    root_hash: str
    recorded_run_id: str
