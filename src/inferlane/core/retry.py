"""One retry policy for every lane: what is worth trying again, and how long to wait first.

    policy = RetryPolicy(attempts=4, backoff_s=0.5)
    policy.call(lambda: sink.commit(shard, rows), what=f"shard {shard}")       # a thread
    await policy.acall(lambda: post(url, body), what="callback")              # the event loop

:func:`is_transient` is the single rule for what a retry can fix. Never: invalid input, a model
error, a bad configuration, a missing file (the same call fails the same way again). Always:
connection errors and timeouts, a full queue or a model not ready yet (503), and database
lock, deadlock and serialization failures. Optional libraries are recognised by their class
names, so this module imports none of them.

A permanent error is raised at once, unchanged. When the attempts (or ``give_up_after_s``) run
out, :class:`RetriesExhausted` is raised with the last error as its cause.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from inferlane.core.errors import InferlaneError, RetriesExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")

OnRetry = Callable[[int, BaseException, float], None]
"""Called before each retry with (retry number from 1, the error, the delay in seconds)."""

_TRANSIENT_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EAGAIN,
    errno.EBUSY, errno.EINTR,
})

_TRANSIENT_CLASSES = frozenset({
    # redis-py
    "redis.exceptions.ConnectionError", "redis.exceptions.TimeoutError",
    "redis.exceptions.BusyLoadingError", "redis.exceptions.TryAgainError",
    # psycopg: connection lost or refused; serialization failures and deadlocks are its subclasses
    "psycopg.OperationalError",
    # httpx
    "httpx.TimeoutException", "httpx.NetworkError", "httpx.RemoteProtocolError",
})

_TRANSIENT_MESSAGES = (
    # sqlite3.OperationalError is also raised for SQL mistakes: only these are worth a retry.
    "database is locked", "database table is locked", "database is busy",
    # pyarrow's S3 filesystem raises a bare OSError naming the AWS SDK error.
    "NETWORK_CONNECTION", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "REQUEST_TIMEOUT",
    "THROTTLING", "Connection refused", "Connection reset", "Timeout was reached",
)


def _class_names(exc: BaseException) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__}


def is_transient(exc: BaseException) -> bool:
    """True when the same call may succeed if tried again later (see the module docstring)."""
    if isinstance(exc, InferlaneError):
        return exc.transient
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    names = _class_names(exc)
    if names & _TRANSIENT_CLASSES:
        return True
    if "cimpl.KafkaException" in names:  # confluent-kafka says itself whether a retry can help
        err = exc.args[0] if exc.args else None
        retriable = getattr(err, "retriable", None)
        return bool(retriable()) if callable(retriable) else False
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if (isinstance(exc, OSError) and exc.errno is None) or "sqlite3.OperationalError" in names:
        text = str(exc)
        return any(m in text for m in _TRANSIENT_MESSAGES)
    return False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by a number of attempts and optionally by time."""

    attempts: int | None = 4
    """Tries in all, the first included (1: never retry); None: bounded by ``give_up_after_s`` alone."""
    backoff_s: float = 0.5
    """Delay before the first retry; each next one is ``multiplier`` times longer."""
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    """No single delay is longer than this."""
    jitter: float = 0.5
    """Each delay is scaled by a random factor in [1 - jitter, 1 + jitter] (spreads retry storms)."""
    give_up_after_s: float | None = None
    """Also stop once this much time has passed since the first try (None: attempts alone)."""

    def __post_init__(self) -> None:
        if self.attempts is None and self.give_up_after_s is None:
            raise ValueError("bound the retries: set attempts, give_up_after_s or both")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoff_s and max_backoff_s must be >= 0, multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        base = min(self.max_backoff_s, self.backoff_s * self.multiplier ** (retry - 1))
        return base * (1 - self.jitter + 2 * self.jitter * rng())

    def _next_delay(self, retry: int, exc: BaseException, started: float, now: float, what: str) -> float:
        """The delay before ``retry``, or raise: the error itself when permanent, RetriesExhausted
        when the budget is spent."""
        if not is_transient(exc):
            raise exc
        if self.attempts is not None and retry >= self.attempts:
            raise RetriesExhausted(what, retry, exc) from exc
        wait = self.delay(retry)
        if self.give_up_after_s is not None and now + wait - started > self.give_up_after_s:
            raise RetriesExhausted(what, retry, exc) from exc
        bound = (f"/{self.attempts - 1}" if self.attempts is not None
                 else f" (giving up {self.give_up_after_s:g} s after the first failure)")
        log.warning("%s: %s: %s; retry %d%s in %.2f s", what, type(exc).__name__, exc, retry, bound, wait)
        return wait

    def call(self, fn: Callable[[], T], *, what: str, on_retry: OnRetry | None = None,
             sleep: Callable[[float], object] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> T:
        """Run ``fn`` until it returns, retrying transient errors (blocking sleeps: threads only)."""
        started = clock()
        retry = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                retry += 1
                wait = self._next_delay(retry, exc, started, clock(), what)
                if on_retry is not None:
                    on_retry(retry, exc, wait)
            sleep(wait)

    async def acall(self, fn: Callable[[], Awaitable[T]], *, what: str, on_retry: OnRetry | None = None,
                    clock: Callable[[], float] = time.monotonic) -> T:
        """Await ``fn()`` until it returns, retrying transient errors with ``asyncio.sleep``."""
        started = clock()
        retry = 0
        while True:
            try:
                return await fn()
            except Exception as exc:
                retry += 1
                wait = self._next_delay(retry, exc, started, clock(), what)
                if on_retry is not None:
                    on_retry(retry, exc, wait)
            await asyncio.sleep(wait)
