"""The stores on the event loop (store/kv ``open_async_kv``): get and put, a Redis killed answers
StoreError fast (never a hang), and the next call after a restart works again by itself; a held
SQLite write lock never blocks a read, and a write gives up on it after a second."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from inferlane.store.kv import StoreError, decode, encode_rows, open_async_kv, open_kv
from inferlane.testing import RestartableRedis

T0 = 1_764_000_000.0


def values(n: int, t: float = T0) -> list[bytes]:
    return encode_rows("m", "1", t, {"y": np.arange(n, dtype=np.float64)})


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_get_and_put(kind: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path))
    url = "store://a" if kind == "sqlite" else f"{redis_url}?prefix=async{int(time.time() * 1e6)}"

    async def main() -> None:
        store = open_async_kv(url)
        try:
            assert await store.put_many([(f"k{i}", v) for i, v in enumerate(values(1500))]) == 1500
            got = await store.get_many(["k7", "nope", "k1499"])
            assert got[1] is None
            assert [float(decode(v).arrays["y"]) for v in got if v is not None] == [7.0, 1499.0]
            assert await store.put_many([("k7", values(1, T0 - 1)[0])]) == 0  # older: skipped
            assert await store.get_many([]) == []
        finally:
            await store.aclose()

    asyncio.run(main())
    sync = open_kv(url)  # the same data through the synchronous store (another connection)
    assert sync.get_many(["k7"])[0] is not None
    sync.close()


def test_sqlite_reads_never_wait_for_a_held_write_lock_and_writes_give_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(tmp_path))

    async def main() -> None:
        store = open_async_kv("store://a")
        try:
            await store.put_many([("k", values(1)[0])])
            lock = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # another process's batch job, mid-transaction
            try:
                put = asyncio.ensure_future(store.put_many([("k2", values(1)[0])]))
                await asyncio.sleep(0)  # the write starts: in its thread, waiting for the lock
                t0 = time.perf_counter()
                assert (await store.get_many(["k"]))[0] is not None  # the loop answers meanwhile
                assert time.perf_counter() - t0 < 0.2
                assert not put.done()
            finally:
                lock.execute("ROLLBACK")
                lock.close()
            assert await put == 1

            # A write lock held past the write timeout (1 s): a transient StoreError, not a pile of waits.
            lock = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            try:
                t0 = time.perf_counter()
                with pytest.raises(StoreError) as info:
                    await store.put_many([("k3", values(1)[0])])
                assert time.perf_counter() - t0 < 2.0 and info.value.transient
            finally:
                lock.execute("ROLLBACK")
                lock.close()
        finally:
            await store.aclose()

    asyncio.run(main())


def test_redis_killed_fails_fast_then_recovers_by_itself(tmp_path: Path) -> None:
    server = RestartableRedis(tmp_path / "redis")
    server.start()

    async def main() -> None:
        store = open_async_kv(f"{server.url}?prefix=p")
        try:
            await store.put_many([("k", values(1)[0])])
            server.kill()
            for call in (lambda: store.get_many(["k"]), lambda: store.put_many([("k", values(1)[0])]),
                         lambda: store.get_many(["k"])):
                t0 = time.perf_counter()
                with pytest.raises(StoreError) as info:
                    await call()
                assert time.perf_counter() - t0 < 1.5
                assert info.value.transient and info.value.http_status == 503
                assert "prefix p" in info.value.message
            server.start()
            assert (await store.get_many(["k"]))[0] is not None  # reconnected: no call to make first
            assert await store.put_many([("k2", values(1)[0])]) == 1  # the script loaded again
        finally:
            await store.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_redis_that_stops_answering_times_out_within_a_second(tmp_path: Path) -> None:
    server = RestartableRedis(tmp_path / "redis")
    server.start()

    async def main() -> None:
        import redis

        store = open_async_kv(f"{server.url}?prefix=p")
        admin = redis.Redis.from_url(server.url)
        try:
            await store.get_many(["k"])
            admin.client_pause(1500, all=True)  # (CLIENT UNPAUSE would wait for the pause too)
            t0 = time.perf_counter()
            with pytest.raises(StoreError) as info:
                await store.get_many(["k"])
            assert time.perf_counter() - t0 < 1.5 and info.value.transient
            assert await store.get_many(["k"]) == [None]  # answered once the pause ends
        finally:
            admin.close()
            await store.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_redis_reads_share_one_pipelined_connection_and_each_call_gets_its_own_values(redis_url: str) -> None:
    """The serving path's reads (store/kv/redis.py ``_Replies``): calls made at once go out on one
    connection without waiting for each other, and every reply reaches the call that asked for it."""
    url = f"{redis_url}?prefix=pipelined{int(time.time() * 1e6)}"

    async def main() -> None:
        store = open_async_kv(url)
        try:
            await store.put_many([(f"k{i}", v) for i, v in enumerate(values(600))])
            asks = [[f"k{i}", "nope", f"k{599 - i}"] for i in range(200)]
            got = await asyncio.gather(*(store.get_many(keys) for keys in asks))
            for i, found in enumerate(got):
                assert found[1] is None
                assert [float(decode(v).arrays["y"]) for v in found if v is not None] == [i, 599 - i]
            many = await store.get_many([f"k{i}" for i in range(600)])  # two MGETs (500 keys each at most)
            assert [float(decode(v).arrays["y"]) for v in many if v is not None] == list(range(600))
        finally:
            await store.aclose()

    asyncio.run(main())


def test_redis_reads_log_in_and_select_the_database_of_the_url(redis_url: str) -> None:
    import redis

    admin = redis.Redis.from_url(redis_url)
    user = f"reader{int(time.time() * 1e6)}"
    admin.acl_setuser(user, enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"])
    base = redis_url.rsplit("/", 1)[0].replace("redis://", f"redis://{user}:s3cret@")

    async def main() -> None:
        writer = open_async_kv(f"{base}/3?prefix=auth")
        reader = open_async_kv(f"{base}/3?prefix=auth")
        elsewhere = open_async_kv(f"{base}/4?prefix=auth")
        refused = open_async_kv(f"{base.replace('s3cret', 'wrong')}/3?prefix=auth")
        try:
            assert await writer.put_many([("k", values(1)[0])]) == 1
            assert (await reader.get_many(["k"]))[0] is not None
            assert await elsewhere.get_many(["k"]) == [None]  # another database
            t0 = time.perf_counter()
            with pytest.raises(StoreError) as info:
                await refused.get_many(["k"])
            assert time.perf_counter() - t0 < 1.5 and "wrong" not in info.value.message
        finally:
            for store in (writer, reader, elsewhere, refused):
                await store.aclose()

    try:
        asyncio.run(main())
    finally:
        admin.acl_deluser(user)
        admin.close()


def test_a_server_that_is_not_redis_is_a_store_error_not_a_hang() -> None:
    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def not_redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await reader.read(100)
            writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            await writer.drain()
            await reader.read(100)  # holds the connection open until the client drops it

        server = await asyncio.start_server(not_redis, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = open_async_kv(f"redis://127.0.0.1:{port}/0?prefix=p")
        try:
            for _ in range(2):  # and again, on a new connection
                t0 = time.perf_counter()
                with pytest.raises(StoreError) as info:
                    await store.get_many(["k"])
                assert time.perf_counter() - t0 < 1.5
                assert "unexpected reply" in info.value.message
        finally:
            await store.aclose()
            for writer in accepted:
                writer.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
