"""Job-store fixtures: a fresh store of each backend per test (the session's redis-server is
``redis_url`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inferlane.store.jobs import JobStore, open_job_store
from tests.conftest import empty_store_url


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend: a new SQLite file, or a flushed Redis database."""
    return empty_store_url(request, tmp_path / "jobs.db")


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    job_store = open_job_store(store_url)
    yield job_store
    job_store.close()
