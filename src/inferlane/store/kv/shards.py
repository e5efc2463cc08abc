"""A batch job's output in a key-value store (``--output store://NAME`` or ``redis://...?prefix=NAME``):
per row, key = the key column(s) as text (several joined with ``|``), value = the row's outputs
(codec.py), computed_at = the shard's scored_at.

Resumable like every batch output: the job's identity and its finished shards are kept in the
same store. SQLite commits a shard's manifest row in the same transaction as its values; Redis
writes it (a hash per job) after them: values are idempotent, so a crash between the two only
writes them again. Report and rejects go where a PostgreSQL output's go (``<state_dir>/batch/``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from inferlane.core.datatypes import to_numpy
from inferlane.core.errors import ConfigError
from inferlane.core.spec import TensorSpec
from inferlane.core.state import state_dir
from inferlane.core.urls import redact, store_url
from inferlane.store.kv.base import StoreError
from inferlane.store.kv.codec import check_keys, encode_rows
from inferlane.store.tables.base import write_jsonl, write_report_beside

T = TypeVar("T")
SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv_batch_jobs (ns TEXT NOT NULL, job_id TEXT NOT NULL, fingerprint TEXT NOT NULL, "
    "PRIMARY KEY (ns, job_id))",
    "CREATE TABLE IF NOT EXISTS kv_batch_shards (ns TEXT NOT NULL, job_id TEXT NOT NULL, shard TEXT NOT NULL, "
    "rows_written INTEGER NOT NULL, rejected INTEGER NOT NULL, committed_at REAL NOT NULL, "
    "PRIMARY KEY (ns, job_id, shard))",
)


class JobRecords(Protocol):
    """Where a store keeps a batch job's identity and finished shards."""

    description: str

    def fingerprint(self) -> str | None:
        """The job's recorded plan fingerprint (None: a new job)."""
        ...

    def start(self, fingerprint: str) -> None:
        """Record the job with ``fingerprint``, forgetting any shards it finished before."""
        ...

    def finished(self) -> dict[str, dict[str, Any]]: ...

    def commit(self, shard: str, items: list[tuple[str, bytes]], ttl_s: float | None, rejected: int) -> None:
        """Write the values, then record the shard as finished."""
        ...

    def close(self) -> None: ...


class SqliteJobs:
    def __init__(self, path: Path, ns: str, job_id: str, *, read_only: bool = False) -> None:
        from inferlane.store.kv.sqlite import SqliteKV

        self.store = SqliteKV(path, ns, read_only=read_only)
        self.description = self.store.description
        self.ns, self.job_id = ns, job_id
        self._conn = self.store.connection
        if not read_only:
            for statement in SQLITE_SCHEMA:
                self._conn.execute(statement)
        self._tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def fingerprint(self) -> str | None:
        if "kv_batch_jobs" not in self._tables:
            return None
        row = self._conn.execute("SELECT fingerprint FROM kv_batch_jobs WHERE ns = ? AND job_id = ?",
                                 (self.ns, self.job_id)).fetchone()
        return None if row is None else str(row[0])

    def start(self, fingerprint: str) -> None:
        def record(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM kv_batch_shards WHERE ns = ? AND job_id = ?", (self.ns, self.job_id))
            c.execute("INSERT INTO kv_batch_jobs VALUES (?, ?, ?) ON CONFLICT (ns, job_id) DO UPDATE SET "
                      "fingerprint = excluded.fingerprint", (self.ns, self.job_id, fingerprint))

        self.store.transaction(record)

    def finished(self) -> dict[str, dict[str, Any]]:
        if "kv_batch_shards" not in self._tables:
            return {}
        rows = self._conn.execute("SELECT shard, rows_written, rejected FROM kv_batch_shards WHERE ns = ? AND "
                                  "job_id = ?", (self.ns, self.job_id)).fetchall()
        return {r[0]: {"shard": r[0], "rows": r[1], "rejected": r[2]} for r in rows}

    def commit(self, shard: str, items: list[tuple[str, bytes]], ttl_s: float | None, rejected: int) -> None:
        self.store.put_many(items, ttl_s, then=lambda c: c.execute(
            "INSERT INTO kv_batch_shards VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (ns, job_id, shard) DO NOTHING",
            (self.ns, self.job_id, shard, len(items), rejected, time.time())))

    def close(self) -> None:
        self.store.close()


class RedisJobs:
    """``<prefix>#batch-jobs`` (job id → fingerprint) and ``<prefix>#batch:<job id>`` (shard → record):
    a prefix has no ``#`` or ``:``, so these never meet a value's key ``<prefix>:<key>``."""

    def __init__(self, url: str, job_id: str, flag: str) -> None:
        import redis

        from inferlane.store.kv.redis import RedisKV

        target = store_url(url, flag)
        assert target.redis is not None
        self.store = RedisKV(target.redis, target.name)
        self.description = self.store.description
        self.job_id = job_id
        self._jobs = f"{target.name}#batch-jobs"
        self._shards = f"{target.name}#batch:{job_id}"
        self._errors = (redis.RedisError,)
        try:
            self.store.client.ping()  # fail at startup with the reason, not shard by shard
        except redis.RedisError as e:
            self.store.close()
            raise ConfigError(f"{flag} {redact(url)}: cannot reach Redis ({e})") from e

    def _call(self, fn: Callable[[Any], T]) -> T:
        """``fn(client)``, a Redis failure as a StoreError (core/retry.py retries the transient ones)."""
        try:
            return fn(self.store.client)
        except self._errors as e:
            raise StoreError.of(self.description, e) from e

    def fingerprint(self) -> str | None:
        found = self._call(lambda c: c.hget(self._jobs, self.job_id))
        return None if found is None else bytes(found).decode()

    def start(self, fingerprint: str) -> None:
        def record(c: Any) -> None:
            pipe = c.pipeline(transaction=True)
            pipe.delete(self._shards)
            pipe.hset(self._jobs, self.job_id, fingerprint)
            pipe.execute()

        self._call(record)

    def finished(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for shard, raw in self._call(lambda c: c.hgetall(self._shards)).items():
            rec = orjson.loads(raw)
            out[shard.decode()] = {"shard": shard.decode(), "rows": rec["rows"], "rejected": rec["rejected"]}
        return out

    def commit(self, shard: str, items: list[tuple[str, bytes]], ttl_s: float | None, rejected: int) -> None:
        self.store.put_many(items, ttl_s)
        record = orjson.dumps({"rows": len(items), "rejected": rejected, "committed_at": time.time()})
        self._call(lambda c: c.hset(self._shards, shard, record))

    def close(self) -> None:
        self.store.close()


def job_records(url: str, job_id: str, *, flag: str = "--output", read_only: bool = False) -> JobRecords | None:
    """The job's records in the store ``url`` names; None for a dry run of an embedded store not
    created yet (``read_only``: nothing is created or changed)."""
    target = store_url(url, flag)
    if target.redis is not None:
        return RedisJobs(url, job_id, flag)
    from inferlane.store.kv import STORE_FILE

    path = state_dir() / STORE_FILE
    if read_only and not path.exists():
        return None
    return SqliteJobs(path, target.name, job_id, read_only=read_only)


def _row_shapes(outputs: Sequence[TensorSpec]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Output name → (datatype, row shape with at most one -1: resolved from the width of a row)."""
    shapes: dict[str, tuple[str, tuple[int, ...]]] = {}
    for spec in outputs:
        row = tuple(spec.shape[1:])
        if sum(d == -1 for d in row) > 1:
            raise ConfigError(f"output {spec.name!r} has shape {list(spec.shape)}: a key-value store output needs "
                              "at most one variable dimension after the batch")
        shapes[spec.name] = (spec.datatype, row)
    return shapes


def column_array(col: pa.ChunkedArray | pa.Array, datatype: str, row: tuple[int, ...], name: str) -> np.ndarray:
    """A scored table's output column (store/tables/arrow.py ``to_arrow``) as the model's array
    [N, *row], bit for bit."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    rows = len(arr)
    flat = arr.flatten() if pa.types.is_fixed_size_list(arr.type) else arr
    out: np.ndarray = flat.to_numpy(zero_copy_only=False)
    want = to_numpy(datatype)
    if datatype != "BYTES" and out.dtype != want:
        out = out.astype(want)
    width = len(out) // rows if rows else 0
    known = int(np.prod([d for d in row if d != -1], dtype=np.int64))
    shape = tuple(width // known if d == -1 else d for d in row) if known else row
    if rows and int(np.prod(shape, dtype=np.int64)) != width:
        raise ConfigError(f"output {name!r}: rows of {width} elements do not fit its shape {list(row)}")
    return out.reshape((rows, *shape))


def key_texts(table: pa.Table, key: list[str]) -> list[str | None]:
    """Each row's key as text: the column's value (several columns joined with ``|``, a missing one
    as ""), as lanes/batch/shards.py writes keys in rejects; None for a missing single key."""
    columns = [table.column(k) for k in key]
    if len(columns) == 1:
        col = columns[0]
        if pa.types.is_integer(col.type):  # Arrow's integer text is Python's; in C, for the usual keys
            return list(pc.cast(col, pa.string()).to_pylist())
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            return list(col.to_pylist())
        return [None if v is None else str(v) for v in col.to_pylist()]
    values = [c.to_pylist() for c in columns]
    return ["|".join("" if v is None else str(v) for v in vs) for vs in zip(*values, strict=True)]


class KVShardSink:
    """A batch job writing into a key-value store (the ShardSink of store/tables/base.py)."""

    def __init__(self, records: JobRecords, *, job_id: str, fingerprint: str, key: list[str],
                 outputs: Sequence[TensorSpec], rejects_dir: Path, ttl_s: float | None = None,
                 overwrite: bool = False) -> None:
        self.records = records
        self.description = records.description
        self.job_id = job_id
        self.key = key
        self.rejects_dir = rejects_dir
        self.ttl_s = ttl_s
        self._shapes = _row_shapes(outputs)
        found = records.fingerprint()
        if found is not None and found != fingerprint and not overwrite:
            raise ConfigError(f"job {job_id!r} already ran into {self.description} with other inputs, "
                              "--shard-rows or --limit; use a new --job-id, or --overwrite to start it again")
        if found is None or overwrite:
            records.start(fingerprint)

    @staticmethod
    def inspect(records: JobRecords, fingerprint: str, *, overwrite: bool) -> dict[str, dict[str, Any]]:
        """The shards the job finished (reading only); ConfigError where the job may not run."""
        found = records.fingerprint()
        if found is None or overwrite:
            return {}
        if found != fingerprint:
            raise ConfigError(f"job already ran into {records.description} with other inputs, --shard-rows or "
                              "--limit; use a new --job-id, or --overwrite to start it again")
        return records.finished()

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        return self.records.finished()

    def items(self, table: pa.Table) -> list[tuple[str, bytes]]:
        """(key, value) per row. A key the store cannot hold raises InvalidInput: the batch lane
        makes such rows rejects before they get here (lanes/batch/shards.py)."""
        if not table.num_rows:
            return []
        arrays = {name: column_array(table.column(name), dt, row, name) for name, (dt, row) in self._shapes.items()}
        model, version = table.column("model_name")[0].as_py(), table.column("model_version")[0].as_py()
        scored_at = table.column("scored_at")[0].as_py().timestamp()
        texts = key_texts(table, self.key)
        check_keys(texts, "key")
        return list(zip(cast(list[str], texts), encode_rows(model, version, scored_at, arrays), strict=True))

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        items = self.items(table)
        if rejects:  # files next to the job; written before the shard is recorded
            self.rejects_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl(self.rejects_dir / f"part-{shard_id}.jsonl", [orjson.dumps(r) for r in rejects])
        self.records.commit(shard_id, items, self.ttl_s, len(rejects))

    def write_report(self, report: dict[str, Any]) -> str:
        return write_report_beside(self.rejects_dir, self.job_id, report)

    def close(self) -> None:
        self.records.close()
