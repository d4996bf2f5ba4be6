"""The docs page renders with the network off (NERVE-4034).

A mock-engine server runs on loopback; headless Chromium (Debian's ``chromium``, driven by
playwright without its own browser downloads) loads ``/schema`` while every request to
any other address is aborted. The page must render the operations from the document, and
no request may have needed the network.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from urllib.parse import urlsplit

import pytest

from orchestrator_core.config import mock_config
from test_harness.support import server_process

OPENAPI = pathlib.Path(__file__).resolve().parents[2] / "contracts" / "openapi.json"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (.ci/run installs it)")


class TestDocsPageOffline:
    """Swagger UI at /schema with every non-loopback request blocked."""

    def test_operations_render_without_network(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4034] The page lists the operations, and it asked nothing of the network."""
        from playwright.sync_api import Route, sync_playwright

        blocked: list[str] = []
        loaded: list[str] = []

        def only_loopback(route: Route) -> None:
            url = route.request.url
            if urlsplit(url).hostname == "127.0.0.1":
                loaded.append(urlsplit(url).path)
                route.continue_()
            else:
                blocked.append(url)
                route.abort()

        with server_process(mock_config(data_dir=str(tmp_path)), tmp_path) as (_proc, url), \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.route("**/*", only_loopback)
                page.goto(f"{url}/schema", wait_until="networkidle")
                page.wait_for_selector(".opblock-summary-path", timeout=15_000)
                paths = sorted({(text or "").replace("\u200b", "") for text in
                                page.locator(".opblock-summary-path").all_text_contents()})
                title = page.title()
            finally:
                browser.close()
        assert blocked == []
        assert title == "orchestratord"
        assert "/schema-assets/swagger-ui/swagger-ui-bundle.js" in loaded
        # every operation of the committed OpenAPI document renders, and nothing else
        assert paths == sorted(json.loads(OPENAPI.read_text())["paths"])
        assert "/v1/runs/{run_id}/steps" in paths
