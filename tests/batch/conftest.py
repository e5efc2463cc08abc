"""Batch-lane fixtures: a real PostgreSQL server for the database sink and a real S3-compatible
server (moto) for object-store paths. Both fail, never skip, when they cannot start."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from inferlane.testing import postgres_server, s3_server, serve_or_fail

BUCKET = "scores-in"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """DSN of a database on a throwaway PostgreSQL server shared by the session (tests use their
    own job ids and tables). Fails, never skips, when PostgreSQL is not installed."""
    yield from serve_or_fail(postgres_server())


@dataclass
class S3:
    endpoint: str
    client: Any


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """moto's S3 server on a free loopback port with the bucket BUCKET, dummy credentials in the
    environment meanwhile."""
    import boto3

    for endpoint in serve_or_fail(s3_server(buckets=[BUCKET])):
        yield S3(endpoint, boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1"))
