"""The API docs page (Swagger UI at ``/schema``), served with no network (NERVE-4034).

Litestar's render plugins load the UI's JavaScript and CSS from a CDN, so without a
network ``/schema`` is a blank page. The assets ship in the ``swagger-ui-py`` package
(``swagger_ui/static``); this module serves that directory under :data:`ASSETS_PATH`
and points the Swagger plugin, favicon included, at it.

Auth: the page and ``/schema/openapi.json`` keep the server's bearer guard (a token is
required when ``auth_tokens`` are configured). The static assets are public: they are
the same third-party files for every server, say nothing about this one, and a browser
cannot attach a bearer token to a ``<script src>`` request.
"""

from __future__ import annotations

import importlib.util
import pathlib

from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.router import Router
from litestar.static_files import create_static_files_router

__all__ = ["ASSETS_PATH", "assets_dir", "docs_assets_router", "swagger_plugin"]

ASSETS_PATH = "/schema-assets/swagger-ui"
"""URL prefix of the Swagger UI assets."""


def assets_dir() -> pathlib.Path:
    """The ``static`` directory of the installed ``swagger_ui`` package.

    Raises:
        RuntimeError: ``swagger-ui-py`` is not installed.
    """
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package (the docs UI's assets) is missing")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "static"


def docs_assets_router() -> Router:
    """The public, undocumented route serving the Swagger UI's files (NERVE-4034)."""
    return create_static_files_router(
        path=ASSETS_PATH, directories=[assets_dir()], opt={"public": True},
        include_in_schema=False, name="docs_assets")


def swagger_plugin() -> SwaggerRenderPlugin:
    """Swagger UI at ``/schema`` and ``/schema/swagger``, loading only local assets."""
    return SwaggerRenderPlugin(
        path=["/swagger"],
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>")
