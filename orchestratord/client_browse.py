"""The client's methods for browsing: the tenant-wide Run list (REC-7051).

:class:`BrowseMethods` is mixed into :class:`~orchestratord.client.OrchestratorClient`,
so these methods are the client's own; they page like its other lists.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from contracts.runs import Run

__all__ = ["BrowseMethods"]


class BrowseMethods:
    """Browsing calls over the client's ``_page`` (one page of a list and its cursor)."""

    async def _page(self, path: str,
                    params: dict[str, Any]) -> tuple[httpx.Response, str | None]:
        raise NotImplementedError  # pragma: no cover - OrchestratorClient defines it

    async def list_all_runs(self, *, mode: str | None = None, status: str | None = None,
                            label: str | None = None, limit: int = 100,
                            after: str | None = None) -> tuple[list[Run], str | None]:
        """``GET /v1/runs``: one page of the caller's Runs of every Flow, oldest first,
        filtered by ``mode``, ``status`` and ``label`` (``key:value``) (REC-7051).

        Returns:
            ``(runs, next_after)``: pass ``next_after`` as ``after`` for the next page;
            None on the last page.

        Raises:
            InvalidParams: a bad filter, ``limit`` (outside 1..1000) or ``after`` (no Run
                of the caller's tenant); ``data.field`` names it.
        """
        resp, nxt = await self._page("/v1/runs", {
            "mode": mode, "status": status, "label": label, "limit": limit, "after": after})
        return msgspec.json.decode(resp.content, type=list[Run]), nxt
