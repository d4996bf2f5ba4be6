"""The Python clients' browsing call: the tenant-wide Run list (REC-7051), as a Call of
the sans-IO core (NERVE-4110); both clients send it as ``list_all_runs``.
"""

from __future__ import annotations

from contracts.runs import Run
from orchestratord.client_calls import Call
from orchestratord.client_routes import Page, page_of

__all__ = ["list_all_runs"]


def list_all_runs(*, mode: str | None = None, status: str | None = None,
                  label: str | None = None, limit: int = 100,
                  after: str | None = None) -> Call[Page[Run]]:
    """``GET /v1/runs``: one page of the caller's Runs of every Flow, oldest first,
    filtered by ``mode``, ``status`` and ``label`` (``key:value``) (REC-7051).

    Returns:
        A Call answering ``(runs, next_after)``: pass ``next_after`` as ``after`` for the
        next page; None on the last page. Sent, it raises ``InvalidParams`` for a bad
        filter, ``limit`` (outside 1..1000) or ``after`` (no Run of the caller's tenant);
        ``data.field`` names it.
    """
    return Call("GET", "/v1/runs", page_of(Run), params={
        "mode": mode, "status": status, "label": label, "limit": limit, "after": after})
