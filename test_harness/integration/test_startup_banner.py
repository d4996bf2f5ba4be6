"""What ``orchestratord serve`` prints when it starts.

[OBS-8067] once the pools are up, the server prints its listen address, auth mode, data
dir, each pool with its engine, models and replica health, and the OpenAPI and docs URLs.
[OBS-8068] Granian's "Embedded server is experimental!" warning is not printed.
"""

from __future__ import annotations

import pathlib

from tools.servers import start_server, stop_server


class TestStartupBanner:
    """The startup lines of a real server process."""

    def test_serve_prints_what_an_operator_needs(self, tmp_path: pathlib.Path) -> None:
        """A --mock server prints the banner lines in order, and no experimental warning
        (Granian's own lines start with ``[``; structured log lines, such as the access
        line of the readiness probe, carry ``level=``)."""
        proc, url = start_server(mock=True, data_dir=str(tmp_path))
        assert stop_server(proc) == 0
        log = (tmp_path / "server.log").read_text().splitlines()
        assert [ln for ln in log if not ln.startswith("[") and " level=" not in ln] == [
            f"orchestratord listening on {url}",
            "  auth: none: one tenant, loopback clients only",
            f"  data dir: {tmp_path}",
            "  pool mock-0: engine mock (mock 1); models mock:echo-1; replicas: mock-0/r0 "
            "ready, mock-0/r1 ready",
            f"  OpenAPI: {url}/schema/openapi.json",
            f"  docs: {url}/schema/swagger"]
        assert [ln for ln in log if "experimental" in ln] == []
