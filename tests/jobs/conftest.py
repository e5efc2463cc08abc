"""Job-store fixtures: a real redis-server for the session, and a fresh store of each backend per test.

redis-server runs on a free port in a temp dir with persistence off; when it is not installed the
fixture fails (never skips) with the install command.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from inferlane.store.jobs import JobStore, open_job_store
from inferlane.testing import redis_server, serve_or_fail


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throwaway redis-server shared by the session. Fails, never
    skips, with the install command (inferlane.testing.INSTALL_REDIS_SERVER) when redis-server is not installed."""
    yield from serve_or_fail(redis_server(tmp_path_factory.mktemp("redis")))


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend: a new SQLite file, or a flushed Redis database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"  # tmp_path is absolute: sqlite:////...
    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    job_store = open_job_store(store_url)
    yield job_store
    job_store.close()
