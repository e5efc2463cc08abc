"""What every key-value store promises (the hybrid lane's precomputed answers and features).

- :class:`KVStore` (batch, stream, materialize: threads) and :class:`AsyncKVStore` (the server's
  event loop). Values are :mod:`codec <inferlane.store.kv.codec>` values; their first 17 bytes say
  when they were computed, and per key the NEWEST value wins: ``put_many`` skips, atomically inside
  the store, a value older than the one stored (an equal one replaces it), whichever lane wrote it.
- A failure of the store itself (refused, timed out, down) raises :class:`StoreError`, whose
  ``transient`` says whether the same call may succeed later (core/retry.py reads it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from inferlane.core.errors import InferlaneError
from inferlane.core.retry import is_transient


class StoreError(InferlaneError):
    """The key-value store did not answer (503); ``transient``: a later call may succeed."""

    http_status = 503
    grpc_code = "UNAVAILABLE"

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    @classmethod
    def of(cls, description: str, error: BaseException) -> StoreError:
        """``error`` (a driver's) as a StoreError naming the store, transient as core/retry.py says."""
        return cls(f"{description}: {type(error).__name__}: {error}", transient=is_transient(error))


class KVStore(Protocol):
    """A synchronous store (batch, stream, materialize).

        store = open_kv("store://fraud")
        store.put_many([("u-1", value)], ttl_s=86400)      # -> 1 (written) or 0 (an older value: skipped)
        store.get_many(["u-1", "u-2"])                     # -> [value, None]
    """

    description: str
    """For messages (a URL's password redacted)."""

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl_s: float | None = None) -> int:
        """Write (key, value) pairs, the newest computed_at winning per key (an equal one replaces);
        returns how many were written. Bulk: one round trip per few hundred keys or fewer."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The value of each key, None when missing or expired; one round trip."""
        ...

    def close(self) -> None: ...


class AsyncKVStore(Protocol):
    """The same store for the event loop: failures raise StoreError quickly (connect within 0.5 s, a
    command within 1 s) and the next call reconnects by itself."""

    description: str
    remote: bool
    """Reads cross a network (a round trip costs far more than a key): the server then gathers the keys
    of concurrent requests into one read (lanes/online/hybrid.py). False: reads are answered inline."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def put_many(self, items: Sequence[tuple[str, bytes]], ttl_s: float | None = None) -> int: ...

    async def aclose(self) -> None: ...
