"""Both key-value stores (store/kv: the embedded SQLite one and Redis) against one suite: bulk put and
get, the newest computed_at winning inside the store, TTLs, hostile keys, 100k keys, round trips."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from inferlane.core.errors import ConfigError, InvalidInput
from inferlane.core.urls import redis_url as parse_redis
from inferlane.store.kv import KVStore, decode, encode_rows, is_kv_url, open_kv
from inferlane.store.kv.redis import CHUNK, RedisKV
from inferlane.store.kv.sqlite import SqliteKV
from inferlane.testing import wait_until

T0 = 1_764_000_000.0


def value(t: float, x: float = 0.0) -> bytes:
    return encode_rows("m", "1", t, {"y": np.array([[x, x]], np.float32)})[0]


def y(raw: bytes | None) -> float:
    assert raw is not None
    return float(decode(raw).arrays["y"][0])


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    s: KVStore
    if request.param == "sqlite":
        s = SqliteKV(tmp_path / "store.db", "t")
    else:
        s = RedisKV(parse_redis(request.getfixturevalue("redis_url"), "url"), f"t{uuid.uuid4().hex[:8]}")
    yield s
    s.close()


def test_put_and_get_many(store: KVStore) -> None:
    items = [(f"k{i}", value(T0, i)) for i in range(1200)]
    assert store.put_many(items) == 1200
    got = store.get_many([f"k{i}" for i in range(1200)] + ["missing"])
    assert got[:1200] == [v for _, v in items]
    assert got[1200] is None
    assert store.get_many([]) == []
    assert store.put_many([]) == 0


def test_newest_wins_older_is_skipped_equal_replaces(store: KVStore) -> None:
    store.put_many([("a", value(T0 + 10, 1.0)), ("b", value(T0, 1.0))])
    assert store.put_many([("a", value(T0 + 5, 2.0)), ("b", value(T0 + 1, 2.0))]) == 1  # a: older, skipped
    assert [y(v) for v in store.get_many(["a", "b"])] == [1.0, 2.0]
    assert store.put_many([("a", value(T0 + 10, 3.0))]) == 1  # equal computed_at: replaces
    assert y(store.get_many(["a"])[0]) == 3.0
    # Within one call the same rule holds, in order.
    assert store.put_many([("c", value(T0 + 2, 1.0)), ("c", value(T0 + 1, 2.0)), ("c", value(T0 + 3, 4.0))]) == 2
    assert y(store.get_many(["c"])[0]) == 4.0


def test_concurrent_writers_cannot_let_an_older_value_win(store: KVStore) -> None:
    keys = [f"k{i}" for i in range(300)]
    times = list(range(20))
    order = {w: np.random.default_rng(w).permutation(times).tolist() for w in range(2)}

    def writer(w: int) -> None:
        for t in order[w]:
            store.put_many([(k, value(T0 + t, float(t))) for k in keys])

    threads = [threading.Thread(target=writer, args=(w,)) for w in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {y(v) for v in store.get_many(keys)} == {19.0}


def test_ttl_expires_and_an_expired_value_is_gone_whatever_its_age(store: KVStore) -> None:
    store.put_many([("short", value(T0 + 100, 1.0)), ("kept", value(T0, 1.0))], ttl_s=0.2)
    store.put_many([("forever", value(T0, 1.0))])
    wait_until(lambda: store.get_many(["short"]) == [None], "the short-lived value expires", 10)
    assert store.get_many(["forever"])[0] is not None
    assert store.put_many([("short", value(T0, 2.0))]) == 1  # older than the expired one: written
    assert y(store.get_many(["short"])[0]) == 2.0
    with pytest.raises(ValueError, match="ttl"):
        store.put_many([("x", value(T0))], ttl_s=0)


def test_hostile_keys(store: KVStore) -> None:
    keys = ["k" * 1024, "é" * 512, "*", "?", "[a]", ":", "a:b:c", " lead and trail ", "🔑", "\n\t", "%s", "'; --",
            "\\", "t:k1"]
    store.put_many([(k, value(T0, i)) for i, k in enumerate(keys)])
    assert [y(v) for v in store.get_many(keys)] == [float(i) for i in range(len(keys))]
    assert store.get_many(["k1"]) == [None]  # "t:k1" is a key of its own, not another prefix's
    for bad in ["", "a\x00b", "k" * 1025, "é" * 513]:
        with pytest.raises(InvalidInput):
            store.put_many([(bad, value(T0))])
        with pytest.raises(InvalidInput):
            store.get_many([bad])
    with pytest.raises(ValueError):
        store.put_many([("ok", b"not a value")])


def test_namespaces_are_apart(tmp_path: Path, redis_url: str) -> None:
    pairs: list[tuple[KVStore, KVStore]] = [
        (SqliteKV(tmp_path / "s.db", "a"), SqliteKV(tmp_path / "s.db", "a.b")),
        (RedisKV(parse_redis(redis_url, "u"), "na"), RedisKV(parse_redis(redis_url, "u"), "na.b"))]
    for a, b in pairs:
        a.put_many([("b:x", value(T0, 1.0))])
        b.put_many([("x", value(T0, 2.0))])
        assert y(a.get_many(["b:x"])[0]) == 1.0 and b.get_many(["b:x"]) == [None]
        assert y(b.get_many(["x"])[0]) == 2.0 and a.get_many(["x"]) == [None]
        a.close()
        b.close()


def test_100k_keys_put_and_get(store: KVStore) -> None:
    n = 100_000
    keys = [f"user-{i}" for i in range(n)]
    values = encode_rows("fraud", "1", T0, {"label": np.arange(n), "probabilities": np.random.rand(n, 2)})
    t0 = time.perf_counter()
    assert store.put_many(list(zip(keys, values, strict=True))) == n
    t1 = time.perf_counter()
    got = store.get_many(keys)
    t2 = time.perf_counter()
    assert got == values
    print(f"{store.description}: put {n / (t1 - t0):,.0f} keys/s, get {n / (t2 - t1):,.0f} keys/s")
    assert t2 - t0 < 20


def test_redis_one_command_per_chunk_of_keys(redis_url: str) -> None:
    store = RedisKV(parse_redis(redis_url, "u"), "rt")
    client = redis.Redis.from_url(redis_url)

    def calls(cmd: str) -> int:
        return int(client.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0))

    try:
        client.script_flush()
        store.put_many([("warm", value(T0))])  # NOSCRIPT once, then the script is loaded
        before = {c: calls(c) for c in ("evalsha", "script|load")}
        n = 4 * CHUNK
        assert store.put_many([(f"k{i}", value(T0)) for i in range(n)]) == n
        assert calls("evalsha") - before["evalsha"] == 4
        assert calls("script|load") == before["script|load"]
        mgets = calls("mget")  # (the script's own MGETs count too: read after the writes)
        assert None not in store.get_many([f"k{i}" for i in range(CHUNK)])
        assert calls("mget") - mgets == 1
    finally:
        store.close()
        client.close()


def test_urls(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_kv_url("store://fraud") and is_kv_url("redis://h:1/0?prefix=p") and is_kv_url("rediss://h/0?prefix=p")
    for no in ["redis://h:1/0/stream", "redis://h:1/0", "sqlite:///x.db", "out/", "kafka://b:1/t", "redis://:x"]:
        assert not is_kv_url(no), no
    for bad in ["store://", "store://a/b", "store://a?x=1", "store://-a", "store://a:b", "store://a#b",
                "redis://h/0/s?prefix=p", "redis://h/0?prefix=", "redis://h/0?prefix=a&x=1", "redis://h/0?prefix=a:b",
                "store://" + "a" * 129]:
        with pytest.raises(ConfigError, match="--sink"):
            open_kv(bad, flag="--sink")
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path))
    s = open_kv("store://fraud")
    assert (tmp_path / "store.db").exists() and "store://fraud" in s.description
    s.close()
    r = open_kv(redis_url.replace("://", "://user:secret@") + "?prefix=fraud")
    assert "secret" not in r.description and "prefix fraud" in r.description
    r.close()
