"""The one retry rule (core/retry.py): what is transient, how long the waits are, when it gives up.

Pure logic: sleeps and the clock are injected, nothing waits.
"""

from __future__ import annotations

import asyncio
import errno
import sqlite3

import confluent_kafka
import httpx
import psycopg
import pytest
import redis

from inferlane.core.errors import (
    BatchSizeMismatch,
    ConfigError,
    DeadlineExceeded,
    InvalidInput,
    ModelError,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    RetriesExhausted,
)
from inferlane.core.retry import RetryPolicy, is_transient

TRANSIENT = [
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    ConnectionResetError(errno.ECONNRESET, "reset"),
    TimeoutError("timed out"),
    OSError(errno.ETIMEDOUT, "timed out"),
    OSError("When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject"),
    QueueFull("full", retry_after=1),
    ModelNotReady("warming up"),
    DeadlineExceeded("too slow"),
    redis.ConnectionError("Connection refused"),
    redis.TimeoutError("Timeout reading from socket"),
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.DeadlockDetected("deadlock detected"),
    sqlite3.OperationalError("database is locked"),
    httpx.ConnectError("connection refused"),
    httpx.ReadTimeout("read timed out"),
    confluent_kafka.KafkaException(confluent_kafka.KafkaError(confluent_kafka.KafkaError._TRANSPORT, "down",
                                                              retriable=True)),
]

PERMANENT = [
    InvalidInput("bad value"),
    PayloadTooLarge("too big"),
    ModelError("the model raised"),
    BatchSizeMismatch("y", 4, 3),
    ConfigError("no such table"),
    FileNotFoundError(errno.ENOENT, "no such file"),
    PermissionError(errno.EACCES, "denied"),
    OSError("When reading information for key 'x' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject"),
    sqlite3.OperationalError("no such table: predictions"),
    psycopg.errors.UndefinedTable("relation does not exist"),
    redis.ResponseError("WRONGTYPE"),
    ValueError("corrupt data"),
    KeyError("missing"),
    confluent_kafka.KafkaException(confluent_kafka.KafkaError(confluent_kafka.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                                              "denied")),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: f"{type(e).__name__}:{str(e)[:30]}")
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_retries_transient_errors_with_growing_delays_then_succeeds() -> None:
    slept: list[float] = []
    calls = iter([ConnectionResetError("reset"), TimeoutError("slow"), "done"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, BaseException):
            raise item
        return item

    seen: list[tuple[int, str]] = []
    policy = RetryPolicy(attempts=5, backoff_s=1.0, multiplier=2.0, jitter=0.0)
    result = policy.call(fn, what="write", sleep=slept.append,
                         on_retry=lambda n, e, d: seen.append((n, type(e).__name__)))
    assert result == "done"
    assert slept == [1.0, 2.0]
    assert seen == [(1, "ConnectionResetError"), (2, "TimeoutError")]


def test_permanent_error_is_raised_at_once_unchanged() -> None:
    slept: list[float] = []
    error = ModelError("the model raised")

    def fn() -> None:
        raise error

    with pytest.raises(ModelError) as info:
        RetryPolicy(attempts=5).call(fn, what="score", sleep=slept.append)
    assert info.value is error
    assert slept == []


def test_gives_up_after_the_attempts_naming_the_last_error() -> None:
    slept: list[float] = []

    def fn() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(RetriesExhausted) as info:
        RetryPolicy(attempts=3, backoff_s=0.1, jitter=0.0).call(fn, what="sink write", sleep=slept.append)
    assert info.value.attempts == 3
    assert "sink write failed 3 times" in info.value.message
    assert "ConnectionRefusedError" in info.value.message
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert not is_transient(info.value)  # the budget is spent: an outer loop must not start over
    assert slept == [pytest.approx(0.1), pytest.approx(0.2)]


def test_gives_up_when_the_time_budget_would_be_exceeded() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    def fn() -> None:
        raise TimeoutError("slow")

    policy = RetryPolicy(attempts=None, backoff_s=1.0, multiplier=2.0, max_backoff_s=4.0, jitter=0.0,
                         give_up_after_s=10.0)
    with pytest.raises(RetriesExhausted):
        policy.call(fn, what="x", sleep=sleep, clock=lambda: now[0])
    assert slept == [1.0, 2.0, 4.0]  # a fourth wait of 4 s would end at 11 s, past the 10 s budget


def test_delays_are_capped_and_jittered_within_bounds() -> None:
    policy = RetryPolicy(backoff_s=0.5, multiplier=2.0, max_backoff_s=3.0, jitter=0.5)
    assert policy.delay(1, rng=lambda: 0.0) == pytest.approx(0.25)
    assert policy.delay(1, rng=lambda: 1.0) == pytest.approx(0.75)
    assert policy.delay(10, rng=lambda: 0.5) == pytest.approx(3.0)


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"attempts": None}, {"backoff_s": -1.0}, {"multiplier": 0.5},
                                    {"jitter": 2.0}])
def test_invalid_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_async_retry_uses_the_same_rule() -> None:
    calls = {"n": 0}

    async def fn() -> int:
        calls["n"] += 1
        if calls["n"] < 3:
            raise QueueFull("full")
        return calls["n"]

    policy = RetryPolicy(attempts=3, backoff_s=0.0, jitter=0.0)
    assert asyncio.run(policy.acall(fn, what="submit")) == 3

    async def bad() -> None:
        raise InvalidInput("bad")

    with pytest.raises(InvalidInput):
        asyncio.run(policy.acall(bad, what="submit"))
