"""Stream tickets: a browser's credential for one Step's stream, or one Run's
(NERVE-4054)."""

from __future__ import annotations

import msgspec

__all__ = ["RunStreamTicket", "StreamTicket"]


class StreamTicket(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A short-lived credential for ``GET /v1/steps/{step_id}/stream?ticket=...``.

    Attributes:
        ticket: opaque, at most 128 ASCII characters; URL-safe as it is.
        step_id: the one Step whose stream it opens.
        expires_in_ms: how long it is accepted from now (ms), 60,000.
    """

    ticket: str
    step_id: str
    expires_in_ms: int


class RunStreamTicket(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A short-lived credential for ``GET /v1/runs/{run_id}/stream?ticket=...``.

    Attributes:
        ticket: opaque, at most 128 ASCII characters; URL-safe as it is.
        run_id: the one Run whose stream it opens.
        expires_in_ms: how long it is accepted from now (ms), 60,000.
    """

    ticket: str
    run_id: str
    expires_in_ms: int
