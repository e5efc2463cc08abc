"""One parser per kind of URL (core/urls.py): the rules every lane and store share."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferlane.core.errors import ConfigError
from inferlane.core.urls import kafka_url, postgres_url, redact, redis_url, scheme, sqlite_url


def test_sqlite() -> None:
    assert sqlite_url("sqlite:///out/s.db?table=t", "--output").path == Path("out/s.db")
    assert sqlite_url("sqlite:///out/s.db?table=t", "--output").params == {"table": "t"}
    assert sqlite_url("sqlite:////abs/s.db", "--output").path == Path("/abs/s.db")
    for bad in ("sqlite://rel.db", "sqlite:///", "sqlite:///dir/"):
        with pytest.raises(ConfigError, match="--output"):
            sqlite_url(bad, "--output")


def test_postgres_keeps_libpq_parameters_and_takes_out_ours() -> None:
    pg = postgres_url("postgresql://app:pw@db:5433/scores?sslmode=require&table=t", "--output")
    assert pg.dsn == "postgresql://app:pw@db:5433/scores?sslmode=require"
    assert pg.params == {"table": "t"}
    with pytest.raises(ConfigError, match="postgresql://user@host:port/database"):
        postgres_url("mysql://db/x", "--output")


@pytest.mark.parametrize(("url", "kind", "db", "name"), [
    ("redis://h:6390/0", "forbidden", 0, None),
    ("redis://h", "forbidden", 0, None),
    ("redis://h:6390/events", "required", 0, "events"),
    ("redis://h:6390/2/events", "required", 2, "events"),
    ("redis://h:6390/events?db=3", "required", 3, "events"),
    ("redis://h:6390/0/42", "required", 0, "42"),
    ("redis://h:6390/1?prefix=p", "optional", 1, None),
])
def test_redis_one_rule_for_the_database_and_the_name(url: str, kind: str, db: int, name: str | None) -> None:
    target = redis_url(url, "--x", name=kind)
    assert (target.host, target.db, target.name) == ("h", db, name)
    assert target.port == (6390 if ":6390" in url else 6379)


def test_redis_credentials_tls_and_mistakes() -> None:
    t = redis_url("rediss://user:p%40ss@h:1/0", "--x")
    assert (t.username, t.password, t.tls) == ("user", "p@ss", True)
    assert "p@ss" not in repr(t) and t.address == "h:1/0"
    with pytest.raises(ConfigError, match="the database is 1 in the path and 2 in"):
        redis_url("redis://h/1/s?db=2", "--x", name="required")
    with pytest.raises(ConfigError, match="name the stream"):
        redis_url("redis://h/0", "--source", name="required")
    with pytest.raises(ConfigError, match="the path is the database number"):
        redis_url("redis://h/jobs", "--store")
    with pytest.raises(ConfigError, match="db=x is not a database number"):
        redis_url("redis://h/s?db=x", "--x", name="required")
    with pytest.raises(ConfigError, match="the port is not a number"):
        redis_url("redis://h:port/0", "--x")


def test_kafka_and_scheme_and_redact() -> None:
    k = kafka_url("kafka://b1:9092,b2:9092/a,b?acks=all", "--sink")
    assert (k.bootstrap, k.names, k.settings) == ("b1:9092,b2:9092", ["a", "b"], {"acks": "all"})
    with pytest.raises(ConfigError, match="kafka://host:port/topic"):
        kafka_url("kafka://b1:9092/", "--sink")
    assert scheme("C:/data/x.csv") == "" and scheme("S3://b/k") == "s3" and scheme("out/") == ""
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
