"""For pytest fixtures: a service that cannot start fails the test with its message, never skips.

    @pytest.fixture(scope="session")
    def redis_url(tmp_path_factory):
        yield from serve_or_fail(redis_server(tmp_path_factory.mktemp("redis")))

pytest is imported only when a fixture calls this, so importing inferlane.testing never needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TypeVar

from inferlane.testing.services.launcher import ServiceError

T = TypeVar("T")


def serve_or_fail(service: AbstractContextManager[T]) -> Iterator[T]:
    """Yield what ``service`` yields. A ServiceError fails the test with its message alone (raised
    outside the exception, so pytest shows no traceback); it never skips."""
    import pytest

    stack = contextlib.ExitStack()
    try:
        value = stack.enter_context(service)
    except ServiceError as e:
        problem = str(e)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)
    with stack:
        yield value
