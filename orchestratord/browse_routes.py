"""The tenant-wide Run list (``GET /v1/runs``, REC-7051) and the run inspector page at
``/ui`` (REC-7060..7066).

The page is three static files shipped in this package (``orchestratord/ui``): no CDN,
no build step, no inline script or style. They are public, like the docs assets: they
hold no secret and say nothing about this server; every API call the page makes carries
the bearer token the user typed (kept in ``sessionStorage``). Each file is answered with
a strict Content-Security-Policy (:data:`UI_CSP`): the page may load and call only its
own origin.
"""

from __future__ import annotations

import importlib.resources

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery

from contracts.errors import NotFound
from contracts.runs import Run
from orchestrator_core.navigation_runs import list_tenant_runs
from orchestrator_core.service import Orchestrator
from orchestratord.nav_routes import _next_link

__all__ = ["BROWSE_ROUTES", "UI_CSP", "UI_FILES", "list_runs", "ui_asset", "ui_page"]

Orch = NamedDependency[Orchestrator]
Tenant = NamedDependency[str]

UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
          "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
          "frame-ancestors 'none'")
"""The Content-Security-Policy of every ``/ui`` answer (REC-7061): only this origin, no
inline script or style, no framing."""

UI_FILES = {"index.html": "text/html", "inspector.js": "text/javascript",
            "inspector.css": "text/css"}
"""The page's files in ``orchestratord/ui``, with their media types (Litestar adds
``charset=utf-8``)."""

_UI_HEADERS = {"Content-Security-Policy": UI_CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    """One file of the page, from the installed package."""
    return importlib.resources.files("orchestratord").joinpath("ui", name).read_bytes()


_BODIES = {name: _read(name) for name in UI_FILES}


@get("/v1/runs")
async def list_runs(orch: Orch, tenant: Tenant, mode: FromQuery[str | None] = None,
                    status: FromQuery[str | None] = None,
                    label: FromQuery[str | None] = None, limit: FromQuery[int] = 100,
                    after: FromQuery[str | None] = None) -> Response[list[Run]]:
    """A page of the caller's Runs of every Flow, oldest first, filtered by ``mode``,
    ``status`` and ``label`` (``key:value``): ``limit`` (1..1000, default 100) after the
    run_id ``after``; ``Link: <...>; rel="next"`` names the next page (REC-7051)."""
    page, next_after = list_tenant_runs(orch.store, tenant, mode=mode, status=status,
                                        label=label, after=after, limit=limit)
    return Response(page, headers=_next_link("/v1/runs", next_after, limit,
                                             {"mode": mode, "status": status,
                                              "label": label}))


@get("/ui", opt={"public": True}, include_in_schema=False)
async def ui_page() -> Response[bytes]:
    """The run inspector page (REC-7060); public, with a strict CSP (REC-7061)."""
    return Response(_BODIES["index.html"], media_type=UI_FILES["index.html"],
                    headers=_UI_HEADERS)


@get("/ui/{name:str}", opt={"public": True}, include_in_schema=False)
async def ui_asset(name: FromPath[str]) -> Response[bytes]:
    """The page's script or style sheet (REC-7060).

    Raises:
        NotFound: any other name.
    """
    body = _BODIES.get(name) if name != "index.html" else None
    if body is None:
        raise NotFound("no such file of the inspector page", data={"field": "name"})
    return Response(body, media_type=UI_FILES[name], headers=_UI_HEADERS)


BROWSE_ROUTES = [list_runs, ui_page, ui_asset]
"""The route handlers the app registers."""
