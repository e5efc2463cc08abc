"""The key-value store of the hybrid lane: per key, a model's outputs for one row (precomputed by
the batch lane, kept fresh by the stream lane, read by the server), the newest computed_at winning.

    store = open_kv("store://fraud")                       # SQLite in the state folder, namespace fraud
    store = open_kv("redis://cache:6379/0?prefix=fraud")   # Redis, keys fraud:<key>
    store.put_many(list(zip(keys, encode_rows("fraud", "3", time.time(), outputs))), ttl_s=86400)
    [decode(v) for v in store.get_many(["u-1"]) if v is not None]

    store = open_async_kv("store://fraud")                 # the server's event loop
    values = await store.get_many(["u-1", "u-2"])

codec.py (the value: raw bytes, bit exact) · base.py (the protocols, StoreError) · sqlite.py and
redis.py (the two backends) · shards.py (a batch job's output in a store).
"""

from __future__ import annotations

from inferlane.core.errors import ConfigError
from inferlane.core.state import state_dir
from inferlane.core.urls import redis_url, scheme, store_url
from inferlane.store.kv.base import AsyncKVStore, KVStore, StoreError
from inferlane.store.kv.codec import (
    MAX_KEY_BYTES,
    Stored,
    check_key,
    check_keys,
    computed_at_us,
    decode,
    encode_rows,
    invalid_keys,
)

STORE_FILE = "store.db"
"""The embedded store's file in the state folder (core/state.py)."""


def is_kv_url(url: str) -> bool:
    """``store://NAME``, or a Redis URL with a ``prefix=`` parameter (a Redis URL naming a stream in
    its path and no prefix= is a stream, not a store)."""
    s = scheme(url)
    if s == "store":
        return True
    if s in ("redis", "rediss"):
        try:
            return "prefix" in redis_url(url, "url", name="optional").params
        except ConfigError:  # not a Redis URL at all: the caller's own parser says why
            return False
    return False


def open_kv(url: str, *, flag: str = "--output") -> KVStore:
    """The store ``url`` names, synchronous; ConfigError naming ``flag`` for a malformed URL."""
    target = store_url(url, flag)
    if target.redis is None:
        from inferlane.store.kv.sqlite import SqliteKV

        return SqliteKV(state_dir() / STORE_FILE, target.name)
    from inferlane.store.kv.redis import RedisKV

    return RedisKV(target.redis, target.name)


def open_async_kv(url: str, *, flag: str = "hybrid.store") -> AsyncKVStore:
    """The store ``url`` names, for the event loop."""
    target = store_url(url, flag)
    if target.redis is None:
        from inferlane.store.kv.sqlite import AsyncSqliteKV

        return AsyncSqliteKV(state_dir() / STORE_FILE, target.name)
    from inferlane.store.kv.redis import AsyncRedisKV

    return AsyncRedisKV(target.redis, target.name)


__all__ = ["MAX_KEY_BYTES", "STORE_FILE", "AsyncKVStore", "KVStore", "StoreError", "Stored", "check_key", "check_keys",
           "computed_at_us", "decode", "encode_rows", "invalid_keys", "is_kv_url", "open_async_kv", "open_kv"]
