"""Shared fixtures: real services only. Everything under tests/integration/ is marked `integration` automatically,
so `pytest -m "not integration"` runs the fast unit tests alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in Path(item.fspath).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    """Model downloads go to a temporary cache, not ~/.cache/scoring."""
    old = os.environ.get("SCORING_CACHE_DIR")
    os.environ["SCORING_CACHE_DIR"] = str(tmp_path_factory.mktemp("scoring-cache"))
    yield
    if old is None:
        os.environ.pop("SCORING_CACHE_DIR", None)
    else:
        os.environ["SCORING_CACHE_DIR"] = old
