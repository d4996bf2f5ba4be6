"""The run inspector page's files and headers (REC-7060, REC-7061).

The browser walk-through is ``test_harness/integration/test_inspector_page.py``; these
check what the server answers and what the shipped files may contain.
"""

from __future__ import annotations

import ast
import importlib.resources
import pathlib

import msgspec
import re2

import orchestratord
from orchestrator_core.config import ServerConfig
from orchestratord.browse_routes import UI_CSP, UI_FILES
from test_harness.support import app_client

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def _text(name: str) -> str:
    return importlib.resources.files("orchestratord").joinpath("ui", name).read_text()


class TestPageRoutes:
    """``/ui`` and its files are public and answered with a strict CSP."""

    def test_the_page_and_its_files_need_no_token_and_carry_the_csp(
            self, mock_cfg: ServerConfig) -> None:
        """[REC-7060] [REC-7061] With bearer tokens configured, ``/ui``,
        ``/ui/inspector.js`` and ``/ui/inspector.css`` answer 200 without a token, each
        with its media type, the CSP, ``nosniff`` and ``no-referrer``; the API still
        wants the token."""
        cfg = msgspec.structs.replace(mock_cfg, auth_tokens={"tok-a": "alpha"})
        with app_client(cfg) as c:
            answers = {path: c.get(path) for path in ("/ui", "/ui/inspector.js",
                                                      "/ui/inspector.css")}
            api = c.get("/v1/runs")
        assert {p: (r.status_code, r.headers["content-type"]) for p, r in answers.items()} == {
            "/ui": (200, "text/html; charset=utf-8"),
            "/ui/inspector.js": (200, "text/javascript; charset=utf-8"),
            "/ui/inspector.css": (200, "text/css; charset=utf-8")}
        for resp in answers.values():
            assert (resp.headers["content-security-policy"],
                    resp.headers["x-content-type-options"],
                    resp.headers["referrer-policy"]) == (CSP, "nosniff", "no-referrer")
        assert UI_CSP == CSP
        assert answers["/ui"].content == _text("index.html").encode()
        assert (api.status_code, api.json()["code"]) == (401, "UNAUTHORIZED")

    def test_any_other_file_name_is_a_typed_not_found(self, mock_cfg: ServerConfig) -> None:
        """[REC-7060] A name that is not one of the page's files is 404 ``NOT_FOUND``
        naming ``name``; a path escape matches no route and is 404 ``NOT_FOUND`` too,
        never a file of the disk."""
        with app_client(mock_cfg) as c:
            answers = [c.get(f"/ui/{name}").json() for name in
                       ("index.html", "missing.js", "%2e%2e", "..%2F__init__.py")]
        named = {"code": "NOT_FOUND", "message": "no such file of the inspector page",
                 "retriable": False, "data": {"field": "name"}}
        assert answers == [named, named, named,
                           {"code": "NOT_FOUND", "message": "Not Found", "retriable": False}]

    def test_the_page_is_not_in_the_api_document(self, mock_cfg: ServerConfig) -> None:
        """[REC-7060] ``/ui`` is a page, not an operation: the OpenAPI document omits it."""
        with app_client(mock_cfg) as c:
            paths = c.get("/schema/openapi.json").json()["paths"]
        assert sorted(p for p in paths if p.startswith("/ui")) == []
        assert "/v1/runs" in paths


class TestShippedFiles:
    """The page is self-contained and runs under its CSP."""

    def test_every_asset_is_local_and_no_script_or_style_is_inline(self) -> None:
        """[REC-7061] The HTML loads exactly the two shipped files, has no inline
        script, style or event handler, and no file names another origin."""
        html = _text("index.html")
        assert html.count("<script") == 1
        assert '<script type="module" src="/ui/inspector.js"></script>' in html
        assert '<link rel="stylesheet" href="/ui/inspector.css">' in html
        for bad in (" style=", " onclick=", " onload=", " onsubmit=", "<style"):
            assert bad not in html, bad
        for name in UI_FILES:
            text = _text(name)
            for bad in ("http://", "https://", "//cdn", "@import"):
                assert bad not in text, (name, bad)

    def test_the_script_writes_api_values_as_text_only(self) -> None:
        """[REC-7062] The script never parses API values as HTML or code."""
        js = _text("inspector.js")
        for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                    "eval(", "new Function"):
            assert bad not in js, bad
        assert "sessionStorage.setItem(TOKEN_KEY" in js
        assert "Authorization = `Bearer ${token()}`" in js
        assert "/stream-ticket" in js


class TestApiOnly:
    """The commands and the page are clients of the HTTP API only."""

    def test_the_commands_import_no_store_and_the_page_calls_only_the_api(self) -> None:
        """[REC-7050] ``cli_browse`` imports neither SQLite nor the store nor the domain
        service, only the client and wire types; the script's requests all go to
        ``/v1/`` paths of its own origin."""
        source = (pathlib.Path(orchestratord.__file__).parent / "cli_browse.py").read_text()
        imported = sorted({
            name for node in ast.walk(ast.parse(source))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [])})
        assert [m for m in imported if m.split(".")[0] in (
            "contracts", "orchestrator_core", "orchestratord", "sqlite3", "sqlite_utils")] == [
            "contracts.errors", "contracts.events", "contracts.runs", "contracts.steps",
            "orchestratord.client"]
        js = _text("inspector.js")
        assert sorted(set(re2.findall(r"(?:api|fetch|EventSource)\(\s*`(/[a-z0-9]+/)", js))) == [
            "/v1/"]
