"""Batch-lane fixtures: a real PostgreSQL server for the database sink."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.services import ServiceError, postgres_server


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a database on a throwaway PostgreSQL server shared by the session (tests use their
    own job ids and tables). Fails, never skips, when PostgreSQL is not installed."""
    stack = contextlib.ExitStack()
    try:
        dsn = stack.enter_context(postgres_server())
    except ServiceError as e:
        problem = str(e)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    with stack:
        yield dsn
