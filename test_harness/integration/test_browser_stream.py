"""A page on another origin streams a Step, and a Run, with EventSource and a ticket
(STREAM-2012, NERVE-4053, NERVE-4054, NERVE-4100).

A bearer-token server (Granian, mock engine) runs on loopback with one allowed origin;
headless Chromium (Debian's ``chromium`` driven by playwright) loads a page served by
the test itself from that origin. The page submits a Step with ``fetch`` and the bearer
token (CORS preflights included), asks a stream ticket, and reads the stream with
``EventSource``: it must receive every token and the ``end`` frame, and its one
reconnect after ``end`` must get 204, which closes the ``EventSource`` for good.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from typing import Any

import msgspec
import pytest

from orchestrator_core.config import mock_config
from test_harness.support import MOCK_MODEL, loopback_http_server, server_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.skipif(not pathlib.Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (.ci/run installs it)")

_SCRIPT = """
async ([api, token, model]) => {
  const auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"};
  const post = async (path, body) => (await fetch(api + path, {
    method: "POST", headers: auth, body: JSON.stringify(body)})).json();
  const flow = await post("/v1/flows", {ast_ir: {browser: 1}});
  const run = await post(`/v1/flows/${flow.flow_id}/runs`, {mode: "record", seed: 7});
  const step = await post(`/v1/runs/${run.run_id}/steps`, {
    type: "llm_call", client_token: "browser-1",
    input: {model: model, prompt: "hello browser", params: {max_tokens: 5}}});
  const ticket = await post(`/v1/steps/${step.step_id}/stream-ticket`, {});
  return await new Promise((resolve) => {
    const seen = {tokens: [], ends: 0, opens: 0, errors: 0};
    const es = new EventSource(
      `${api}/v1/steps/${step.step_id}/stream?ticket=${encodeURIComponent(ticket.ticket)}`);
    es.onopen = () => { seen.opens += 1; };
    es.addEventListener("token", (e) => { seen.tokens.push(JSON.parse(e.data).i); });
    es.addEventListener("end", () => { seen.ends += 1; });
    es.onerror = () => {
      seen.errors += 1;
      if (es.readyState === EventSource.CLOSED) { seen.state = "closed"; resolve(seen); }
    };
    setTimeout(() => { seen.state = "timeout:" + es.readyState; resolve(seen); }, 20000);
  });
}
"""

_RUN_SCRIPT = """
async ([api, token, model]) => {
  const auth = {"Authorization": "Bearer " + token, "Content-Type": "application/json"};
  const post = async (path, body) => (await fetch(api + path, {
    method: "POST", headers: auth, body: JSON.stringify(body)})).json();
  const flow = await post("/v1/flows", {ast_ir: {browser: 2}});
  const run = await post(`/v1/flows/${flow.flow_id}/runs`, {mode: "record", seed: 7});
  const ticket = await post(`/v1/runs/${run.run_id}/stream-ticket`, {});
  return await new Promise((resolve) => {
    const seen = {tokens: 0, ends: 0, run_ends: 0, opens: 0, errors: 0,
                  ticket_run: ticket.run_id === run.run_id};
    const es = new EventSource(
      `${api}/v1/runs/${run.run_id}/stream?ticket=${encodeURIComponent(ticket.ticket)}`);
    es.onopen = async () => {
      seen.opens += 1;
      if (seen.opens > 1) { return; }
      for (const token of ["a", "b"]) {
        await post(`/v1/runs/${run.run_id}/steps`, {
          type: "llm_call", client_token: token,
          input: {model: model, prompt: "hello " + token, params: {max_tokens: 3}}});
      }
    };
    es.addEventListener("token", () => { seen.tokens += 1; });
    es.addEventListener("end", async () => {
      seen.ends += 1;
      if (seen.ends === 2) {
        await post(`/v1/runs/${run.run_id}/close`, {status: "completed"});
      }
    });
    es.addEventListener("run_end", () => { seen.run_ends += 1; });
    es.onerror = () => {
      seen.errors += 1;
      if (es.readyState === EventSource.CLOSED) { seen.state = "closed"; resolve(seen); }
    };
    setTimeout(() => { seen.state = "timeout:" + es.readyState; resolve(seen); }, 20000);
  });
}
"""


class _Page(BaseHTTPRequestHandler):
    """Serves an empty page: the document whose origin the script runs in."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>page</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@contextmanager
def _page_origin() -> Iterator[str]:
    """A page server on another loopback port (another origin than the API's, and a
    loopback one, so Chromium's local-network rules let it call the API); its origin."""
    with loopback_http_server(_Page) as origin:
        yield origin


def _in_page(tmp_path: pathlib.Path, script: str) -> tuple[Any, list[int]]:
    """Run ``script`` in headless Chromium on a page of an allowed origin, against a
    bearer-token server (mock engine): what the script resolved to, and the status of
    every stream request the page made."""
    from playwright.sync_api import Response, sync_playwright

    streams: list[int] = []

    def on_response(resp: Response) -> None:
        if "/stream?" in resp.request.url:
            streams.append(resp.status)

    with _page_origin() as origin:
        cfg = msgspec.structs.replace(mock_config(data_dir=str(tmp_path)),
                                      auth_tokens={"tok-page": "alpha"},
                                      allowed_origins=[origin])
        with server_process(cfg, tmp_path) as (_proc, url), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox"])
            try:
                tab = browser.new_page()
                tab.on("response", on_response)
                tab.goto(f"{origin}/")
                seen = tab.evaluate(script, [url, "tok-page", MOCK_MODEL])
            finally:
                browser.close()
    return seen, streams


class TestEventSourceWithTicket:
    """Chromium on an allowed origin reads a Step's stream and stops after ``end``."""

    def test_eventsource_reads_every_token_and_stops_after_end(
            self, tmp_path: pathlib.Path) -> None:
        """[STREAM-2012] [NERVE-4053] [NERVE-4054] Five tokens and one ``end`` arrive
        through the ticket; the reconnect after ``end`` is 204, and the EventSource
        closes after exactly two stream requests."""
        seen, streams = _in_page(tmp_path, _SCRIPT)
        assert json.dumps(seen, sort_keys=True) == json.dumps(
            {"ends": 1, "errors": 2, "opens": 1, "state": "closed",
             "tokens": [0, 1, 2, 3, 4]}, sort_keys=True)
        assert streams == [200, 204]  # the reconnect carried Last-Event-ID 6, the end


class TestRunStreamWithTicket:
    """Chromium follows a whole Run through a run ticket until ``run_end``."""

    def test_eventsource_follows_a_run_until_run_end(self, tmp_path: pathlib.Path) -> None:
        """[NERVE-4054] [NERVE-4100] The page opens the run stream with a run ticket, then
        submits two Steps and closes the Run: both Steps' tokens and ``end`` frames and one
        ``run_end`` arrive, and the reconnect after ``run_end`` is 204."""
        seen, streams = _in_page(tmp_path, _RUN_SCRIPT)
        assert json.dumps(seen, sort_keys=True) == json.dumps(
            {"ends": 2, "errors": 2, "opens": 1, "run_ends": 1, "state": "closed",
             "ticket_run": True, "tokens": 6}, sort_keys=True)
        assert streams == [200, 204]
