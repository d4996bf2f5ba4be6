"""Fixtures shared by every suite, and registration of requirement-id tags as markers."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from orchestrator_core import store_open
from orchestrator_core.config import ServerConfig, mock_config
from test_harness.store_param import Schemas, on_postgres, with_test_store
from test_harness.support import app_client

_TAG = re.compile(r"@([A-Za-z][\w-]*)")


def pytest_configure(config: pytest.Config) -> None:
    """Register every Gherkin tag used in the feature files (requirement ids) as a marker,
    so ``--strict-markers`` still catches typos in Python code."""
    features = pathlib.Path(__file__).parent / "features"
    tags: set[str] = set()
    for path in features.glob("*.feature"):
        for line in path.read_text().splitlines():
            if line.strip().startswith("@"):
                tags.update(_TAG.findall(line))
    for tag in sorted(tags):
        config.addinivalue_line("markers", f"{tag}: requirement tag from the feature files")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, skip the tests about SQLite itself, and those that build
    their own PostgreSQL stores, which ran in the first pass already (PG-9053)."""
    if not on_postgres():
        return
    skip = pytest.mark.skip(reason="about SQLite itself (sqlite_only); this pass runs on "
                            "PostgreSQL")
    again = pytest.mark.skip(reason="builds its own PostgreSQL stores (own_stores): it ran "
                             "in the first pass, this pass adds nothing")
    for item in items:
        if item.get_closest_marker("sqlite_only") is not None:
            item.add_marker(skip)
        elif item.get_closest_marker("own_stores") is not None:
            item.add_marker(again)


@pytest.fixture(autouse=True, scope="session")
def _store_backend() -> Iterator[None]:
    """On the PostgreSQL pass, every server the suites build without a store of its own
    runs on PostgreSQL in the schema of its data dir (PG-9053); for the whole session, so
    module-scoped servers are on it too. (Its own MonkeyPatch: a test's
    ``monkeypatch.undo()`` must not undo it.)"""
    if not on_postgres():
        yield
        return
    real = store_open.open_store
    mp = pytest.MonkeyPatch()
    mp.setattr(store_open, "open_store", lambda cfg: real(with_test_store(cfg)))
    try:
        yield
    finally:
        mp.undo()
        Schemas.drop(set(Schemas.made))


@pytest.fixture(autouse=True)
def _test_schemas(_store_backend: None) -> Iterator[None]:
    """On the PostgreSQL pass, the schemas a test made are dropped when it ends; those of
    longer-lived fixtures made before it, when the session ends (PG-9053)."""
    before = set(Schemas.made)
    yield
    Schemas.drop(Schemas.made - before)


@pytest.fixture(autouse=True, scope="session")
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The default data dir is per user (OBS-8065): a test that does not name one gets a
    temporary ``XDG_DATA_HOME``, never the real one."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    yield
    mp.undo()


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, like Granian."""
    return "asyncio"


@pytest.fixture
def mock_cfg(tmp_path: pathlib.Path) -> ServerConfig:
    """Mock-engine config with its data in a fresh temporary directory."""
    return mock_config(data_dir=str(tmp_path / "data"))


@pytest.fixture
def client(mock_cfg: ServerConfig) -> Iterator[TestClient[Any]]:
    """An in-process server on the mock engine."""
    with app_client(mock_cfg) as c:
        yield c


@pytest.fixture
def ctx() -> dict[str, Any]:
    """Scenario-scoped scratch space shared by BDD steps."""
    return {}


def with_options(cfg: ServerConfig, **options: Any) -> ServerConfig:
    """A copy of a mock config with pool options changed (e.g. ``tokens_per_s``)."""
    pool = msgspec.structs.replace(cfg.pools[0], options={**cfg.pools[0].options, **options})
    return msgspec.structs.replace(cfg, pools=[pool])
