"""Shared fixtures: where the real offline data lives, and a cache folder that survives between test runs.

The data in ../shared/data is read-only; anything unpacked or decoded from it goes to the test cache
(HYBRIDSWEEP_TEST_CACHE, default ~/.cache/hybridsweep-tests), so the 60k JPEGs are decoded once per machine.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("HYBRIDSWEEP_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "cifar10-jpg.tar.gz").exists():
        pytest.fail(f"real test data not found at {root}; set HYBRIDSWEEP_SHARED_DATA to the shared/data folder")
    return root


@pytest.fixture(scope="session")
def test_cache() -> Path:
    root = Path(os.environ.get("HYBRIDSWEEP_TEST_CACHE", Path.home() / ".cache" / "hybridsweep-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root
