"""The embedded key-value store: one SQLite file (``state_dir() / "store.db"``), one table, a
namespace per ``store://NAME``. WAL, so a server reads while a batch job writes.

    store = SqliteKV(state_dir() / "store.db", "fraud")

The newest value wins inside SQLite: an UPSERT whose ``DO UPDATE ... WHERE`` keeps the stored row
when it is newer (and not expired). A write returns once committed (``synchronous=FULL``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inferlane.store.kv.base import StoreError
from inferlane.store.kv.codec import TIME_DIGITS, check_keys, computed_at_us
from inferlane.store.sqlite import open_durable

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, computed_at INTEGER NOT NULL, "
    "expires_at REAL, value BLOB NOT NULL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    # Only rows with a TTL are indexed: the sweep of expired rows costs nothing without TTLs.
    "CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at) WHERE expires_at IS NOT NULL",
)
UPSERT = ("INSERT INTO kv (ns, key, computed_at, expires_at, value) VALUES (?1, ?2, ?3, ?4, ?5) "
          "ON CONFLICT (ns, key) DO UPDATE SET computed_at = excluded.computed_at, "
          "expires_at = excluded.expires_at, value = excluded.value "
          "WHERE excluded.computed_at >= kv.computed_at OR kv.expires_at <= ?6")
"""Newest wins (an equal computed_at replaces); an expired row is gone, whatever its age."""
SWEEP = ("DELETE FROM kv WHERE (ns, key) IN "
         "(SELECT ns, key FROM kv WHERE expires_at <= ? ORDER BY expires_at LIMIT 1000)")
"""Expired rows, a bounded number per write (reads already treat them as missing)."""
READ_CHUNK = 500
"""Keys per ``IN (...)`` query (below every SQLite build's variable limit)."""
Then = Callable[[sqlite3.Connection], object]


def _chunks(keys: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for lo in range(0, len(keys), n):
        yield keys[lo:lo + n]


def select_values(conn: sqlite3.Connection, ns: str, keys: Sequence[str], now: float) -> list[bytes | None]:
    """Each key's unexpired value in ``ns`` (None when missing or expired)."""
    found: dict[str, bytes] = {}
    for chunk in _chunks(keys, READ_CHUNK):
        marks = ",".join("?" * len(chunk))
        for key, value, expires_at in conn.execute(
                f"SELECT key, value, expires_at FROM kv WHERE ns = ? AND key IN ({marks})", (ns, *chunk)):
            if expires_at is None or expires_at > now:
                found[key] = value
    return [found.get(k) for k in keys]


class SqliteKV:
    """The embedded store, synchronous; one connection shared by the caller's threads under a lock."""

    def __init__(self, path: Path, ns: str, *, read_only: bool = False, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.ns = ns
        self.description = f"store://{ns} (SQLite {path})"
        self._lock = threading.Lock()
        try:
            if read_only:  # a dry run: an existing file, nothing created or changed
                self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                             check_same_thread=False)
                return
            self._conn = open_durable(path, busy_timeout_s=busy_timeout_s)
            for statement in SCHEMA:
                self._conn.execute(statement)
        except sqlite3.Error as e:
            raise StoreError.of(self.description, e) from e

    @property
    def connection(self) -> sqlite3.Connection:
        """For the batch sink's manifest, which commits in the same transaction as the rows."""
        return self._conn

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl_s: float | None = None, *,
                 then: Then | None = None) -> int:
        """Write the pairs in one transaction; ``then(connection)`` runs inside it, after the rows."""
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s {ttl_s!r}: a TTL is positive seconds, or None")
        now = time.time()
        expires = now + ttl_s if ttl_s is not None else None
        check_keys([k for k, _ in items], "key")
        times: dict[bytes, int] = {}  # the values of one call mostly share their computed_at: parsed once
        rows = []
        ns = self.ns
        for k, v in items:
            head = v[:TIME_DIGITS]
            t = times.get(head)
            if t is None:
                t = times[head] = computed_at_us(head)
            rows.append((ns, k, t, expires, v, now))
        written = 0

        def write(conn: sqlite3.Connection) -> None:
            nonlocal written
            before = conn.total_changes
            conn.executemany(UPSERT, rows)
            written = conn.total_changes - before
            conn.execute(SWEEP, (now,))
            if then is not None:
                then(conn)

        self.transaction(write)
        return written

    def transaction(self, fn: Then) -> None:
        """``fn(connection)`` in one write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back when
        it raises); a SQLite failure is a StoreError."""
        conn = self._conn
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StoreError.of(self.description, e) from e

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        check_keys(keys, "key")
        with self._lock:
            try:
                return select_values(self._conn, self.ns, keys, time.time())
            except sqlite3.Error as e:
                raise StoreError.of(self.description, e) from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class AsyncSqliteKV:
    """The embedded store on the event loop: reads answered inline on a read connection of their own
    (a point lookup takes microseconds, and a WAL reader never waits for the writer); writes on the
    writer's connection in a thread of their own, so a held write lock never blocks the loop nor
    fills the loop's shared thread pool, and one held past ``write_timeout_s`` (a batch job's long
    transaction) is a transient StoreError rather than a queue of waiting writes."""

    remote = False

    def __init__(self, path: Path, ns: str, *, write_timeout_s: float = 1.0) -> None:
        self._writer = SqliteKV(path, ns, busy_timeout_s=write_timeout_s)
        self.description = self._writer.description
        self.ns = ns
        try:
            self._reader = open_durable(path, busy_timeout_s=0.25)
        except sqlite3.Error as e:
            self._writer.close()
            raise StoreError.of(self.description, e) from e
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        check_keys(keys, "key")
        try:
            return select_values(self._reader, self.ns, keys, time.time())
        except sqlite3.Error as e:
            raise StoreError.of(self.description, e) from e

    async def put_many(self, items: Sequence[tuple[str, bytes]], ttl_s: float | None = None) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.put_many, items, ttl_s)

    async def aclose(self) -> None:
        self._reader.close()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.close)
        self._thread.shutdown()
