"""The llama.cpp replica's port is bound to loopback and not advertised.

[PLACE-5009] On the real engine: the worker process listens on 127.0.0.1 only, and
``GET /v1/pools`` names neither its URL nor its port.
"""

from __future__ import annotations

import pathlib

import httpx
import pytest

from tools.listeners import listening_addresses
from tools.servers import start_server, stop_server

pytestmark = pytest.mark.engine


class TestReplicaPort:
    """The engine replica's own port is no way in."""

    def test_the_worker_listens_on_loopback_and_the_pools_view_hides_it(
            self, tmp_path: pathlib.Path) -> None:
        """[PLACE-5009] The worker's one listening socket is on 127.0.0.1, and the pools
        view's text contains neither ``url`` nor that port."""
        proc, url = start_server(data_dir=str(tmp_path))
        try:
            body = httpx.get(url + "/v1/pools", timeout=10).text
            pid = httpx.get(url + "/v1/pools", timeout=10).json()[0]["replicas"][0]["pid"]
            listening = listening_addresses(pid)
        finally:
            assert stop_server(proc) == 0
        assert [host for host, _ in listening] == ["127.0.0.1"]
        port = listening[0][1]
        assert f":{port}" not in body and '"url"' not in body
        assert str(port) not in body.replace(str(pid), "")
