"""A real server (Granian + llama.cpp + SmolLM2) shared by the determinism suite."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import httpx
import pytest

from orchestrator_core.config import default_config
from test_harness.support import server_process


@pytest.fixture(scope="session")
def real_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """HTTP client of a real server on the default config (one llama.cpp replica)."""
    data = pathlib.Path(tmp_path_factory.mktemp("real"))
    cfg = default_config(data_dir=str(data))
    with server_process(cfg, data) as (_proc, url), \
            httpx.Client(base_url=url, timeout=120.0) as http:
        yield http
