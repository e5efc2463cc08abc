"""Stream-lane fixtures: a real Kafka-protocol broker (Tansu) and a real redis-server for the session,
and a unique prefix per test so that tests never share topics, streams or consumer groups.

Both services fail, never skip, with the install command when their binary is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from inferlane.testing import kafka_broker, redis_server, serve_or_fail


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a throwaway Tansu Kafka broker (in-memory storage) shared by the session."""
    yield from serve_or_fail(kafka_broker(tmp_path_factory.mktemp("tansu")))


@pytest.fixture(scope="session")
def stream_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throwaway redis-server shared by the stream tests."""
    yield from serve_or_fail(redis_server(tmp_path_factory.mktemp("stream-redis")))


@pytest.fixture
def topic_prefix() -> str:
    """A prefix unique to this test for its topic, stream and group names, e.g. ``t3f9a0c1d``."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(stream_redis_url: str) -> Iterator[redis.Redis]:
    """A Redis client on the session's stream Redis."""
    c = redis.Redis.from_url(stream_redis_url)
    yield c
    c.close()
