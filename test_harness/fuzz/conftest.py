"""Fixtures shared by the fuzz suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis.configuration import set_hypothesis_home_dir, storage_directory


@pytest.fixture(scope="module")
def hypothesis_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep Hypothesis's caches out of the repository.

    ``database=None`` stops the example database, but Hypothesis still caches the
    constants it collects from local modules and its Unicode tables under
    ``./.hypothesis``; point that home at a temporary directory for this module.
    """
    previous = storage_directory(intent_to_write=False).home_directory
    set_hypothesis_home_dir(tmp_path_factory.mktemp("hypothesis"))
    yield
    set_hypothesis_home_dir(previous)
