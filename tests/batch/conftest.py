"""Batch-lane fixtures: a real PostgreSQL server for the database sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import postgres_server, serve_or_fail


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a database on a throwaway PostgreSQL server shared by the session (tests use their
    own job ids and tables). Fails, never skips, when PostgreSQL is not installed."""
    yield from serve_or_fail(postgres_server())
