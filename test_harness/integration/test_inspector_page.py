"""The run inspector page in a real browser, with auth on (REC-7060..7066).

A bearer-token server (Granian, the divergable mock engine of
:mod:`test_harness.integration.divergent_server`) records a Run of two ``llm_call``
Steps; then the engine is made to diverge at token 3 and a ``strict_replay`` of the
Run ends its first Step with ``REPLAY_DIVERGED``. Headless Chromium (Debian's
``chromium`` driven by playwright) opens ``/ui`` with every non-loopback request
aborted, is asked for the token, lists the Runs, opens the recording and its
timeline, reads a Step's frames (EventSource through a stream ticket), opens the
replay and compares its Step with the recording's: the first divergent token, index 3,
is highlighted on both sides. A screenshot is saved as an artefact
(``$TEST_ARTIFACTS`` or the test's temporary directory).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest

from orchestrator_core.config import ServerConfig, mock_config
from test_harness.integration.divergent_server import DIVERGE_AT
from test_harness.support import llm_step
from tools.servers import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (.ci/run installs it)")


@contextmanager
def divergent_server(cfg: ServerConfig, data_dir: pathlib.Path) -> Iterator[str]:
    """The divergable server on a free loopback port, until the block ends; its URL."""
    cfg = msgspec.structs.replace(cfg, port=free_port(), data_dir=str(data_dir))
    (data_dir / "config.json").write_bytes(msgspec.json.encode(cfg))
    with open(data_dir / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "test_harness.integration.divergent_server",
             str(data_dir / "config.json")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{cfg.port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (data_dir / "server.log").read_text()
            try:
                if httpx.get(url + "/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _run_to_end(http: httpx.Client, run_id: str, body: dict[str, Any]) -> None:
    with http.stream("POST", f"/v1/runs/{run_id}/steps", json=body,
                     headers={"accept": "text/event-stream"}) as resp:
        assert resp.status_code == 201
        resp.read()


def _record_and_diverge(url: str, data_dir: pathlib.Path) -> tuple[str, str]:
    """Record a Run of two Steps, make the engine diverge, strict-replay the first Step:
    ``(recorded run_id, replay run_id)``."""
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer tok-ui"},
                      timeout=30) as http:
        flow = http.post("/v1/flows", json={"ast_ir": {"inspector": 1}}).json()["flow_id"]
        rec = http.post(f"/v1/flows/{flow}/runs", json={"mode": "record", "seed": 7}).json()
        _run_to_end(http, rec["run_id"], llm_step("first", prompt="inspect me please"))
        _run_to_end(http, rec["run_id"], llm_step("second", prompt="and then this"))
        (data_dir / "diverge").touch()
        rep = http.post(f"/v1/flows/{flow}/runs", json={
            "mode": "strict_replay", "replay_of": rec["run_id"]}).json()
        _run_to_end(http, rep["run_id"], llm_step("first", prompt="inspect me please"))
    return rec["run_id"], rep["run_id"]


class TestInspectorPage:
    """Chromium reads runs, a timeline, frames and a divergence through /ui."""

    def test_page_shows_runs_timeline_frames_and_the_first_divergent_token(
            self, tmp_path: pathlib.Path) -> None:
        """[REC-7060] [REC-7061] [REC-7062] [REC-7063] [REC-7064] [REC-7065] [REC-7066]
        With auth on, the page asks for the token, lists both Runs, shows the recording's
        two Steps and a Step's frames, and highlights index 3 on both sides of the
        replay's comparison, with no request leaving loopback."""
        from playwright.sync_api import Route, sync_playwright

        blocked: list[str] = []

        def only_loopback(route: Route) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        cfg = msgspec.structs.replace(mock_config(), auth_tokens={"tok-ui": "alpha"})
        with divergent_server(cfg, tmp_path) as url, sync_playwright() as pw:
            rec_id, rep_id = _record_and_diverge(url, tmp_path)
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.route("**/*", only_loopback)
                console_errors: list[str] = []
                page.on("console", lambda m: console_errors.append(m.text)
                        if m.type == "error" else None)
                page.goto(f"{url}/ui")
                page.wait_for_selector("#login:not([hidden])")
                page.fill("#token", "tok-ui")
                page.click("#login-submit")
                page.wait_for_selector("#runs tbody tr[data-run-id]")
                listed = page.eval_on_selector_all(
                    "#runs tbody tr", "rows => rows.map(r => r.dataset.runId)")

                page.click(f"#runs tr[data-run-id='{rec_id}'] .run-link")
                page.wait_for_selector("#steps tbody tr[data-step-id]")
                timeline = page.eval_on_selector_all(
                    "#steps tbody tr", "rows => rows.map(r => [...r.cells].slice(2, 4)"
                    ".map(c => c.textContent))")
                page.click("#steps tbody tr:first-child .frames-link")
                page.wait_for_selector("#frames li[data-event='end']")
                events = page.eval_on_selector_all(
                    "#frames li", "items => items.map(i => i.dataset.event)")
                stored = page.evaluate("() => sessionStorage.getItem('orchestratord.token')")

                page.click(f"#runs tr[data-run-id='{rep_id}'] .run-link")
                page.wait_for_selector("#steps tbody tr .compare-link")
                page.click("#steps tbody tr:first-child .compare-link")
                page.wait_for_selector("#compare-summary[data-first-divergent]")
                first = page.get_attribute("#compare-summary", "data-first-divergent")
                marked = page.eval_on_selector_all(
                    ".tok.divergent", "spans => spans.map(s => [s.parentElement.id, "
                    "s.dataset.index, s.textContent])")
                summary = page.text_content("#compare-summary")
                artefacts = pathlib.Path(os.environ.get("TEST_ARTIFACTS", tmp_path))
                artefacts.mkdir(parents=True, exist_ok=True)
                shot = artefacts / "inspector-divergence.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        assert blocked == []
        # the one 401 is the page's first probe, made before it had a token to send
        assert console_errors == ["Failed to load resource: the server responded with a "
                                  "status of 401 (Unauthorized)"]
        assert stored == "tok-ui"
        assert listed == [rec_id, rep_id]
        assert timeline == [["llm_call", "succeeded"], ["llm_call", "succeeded"]]
        assert events[0] == "started"
        assert events[-1] == "end"
        assert set(events[1:-1]) == {"token"}
        assert first == str(DIVERGE_AT) == "3"
        assert [m[:2] for m in marked] == [["recording-tokens", "3"], ["replay-tokens", "3"]]
        assert marked[1][2] == " divergent"
        assert summary is not None
        assert summary.startswith("first divergent token at index 3: recording ")
        assert summary.endswith('replay " divergent" (id 7) — the replay ended with '
                                "REPLAY_DIVERGED")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def test_without_tokens_the_page_asks_nothing(self, tmp_path: pathlib.Path) -> None:
        """[REC-7062] On a loopback server with no tokens configured the page lists the
        Runs straight away: no token prompt, nothing kept in sessionStorage."""
        from playwright.sync_api import sync_playwright

        with divergent_server(mock_config(), tmp_path) as url, sync_playwright() as pw:
            with httpx.Client(base_url=url, timeout=30) as http:
                flow = http.post("/v1/flows", json={"ast_ir": {"open": 1}}).json()["flow_id"]
                run_id = http.post(f"/v1/flows/{flow}/runs", json={}).json()["run_id"]
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(f"{url}/ui")
                page.wait_for_selector("#runs tbody tr[data-run-id]")
                listed = page.eval_on_selector_all(
                    "#runs tbody tr", "rows => rows.map(r => r.dataset.runId)")
                login_hidden = page.is_hidden("#login")
                stored = page.evaluate("() => sessionStorage.length")
            finally:
                browser.close()
        assert (listed, login_hidden, stored) == ([run_id], True, 0)
