"""Batch outputs. Each sink commits one shard atomically and records it in a manifest only once
its rows are durable, so a killed job re-run with the same id writes exactly the same rows:

- file sinks (Parquet folder, CSV, JSONL): part written to a temp file, fsynced, renamed to its
  deterministic name ``part-<shard>.<ext>``, then a manifest line appended and fsynced. A crash
  between rename and manifest leaves a part that the re-run overwrites (never a duplicate).
- database sinks (SQLite, PostgreSQL): rows upserted on the key and the manifest row written in
  one transaction per shard.

    sink = open_sink("out/scores/", job_id="nightly", fingerprint=fp)
    done = sink.finished_shards()
    sink.commit(shard_id, table, rejects)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse, urlunparse

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inferlane.core.errors import ConfigError

META_DIR = "_inferlane"
REJECTS_DIR = "_rejects"


class Sink(Protocol):
    description: str

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        """Shard id → its manifest record, for shards already committed by this job."""
        ...

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        """Make the shard's rows and rejects durable, then record the shard as finished."""
        ...

    def write_report(self, report: dict[str, Any]) -> str:
        """Store the final report; returns where."""
        ...

    def append(self, table: pa.Table) -> None:
        """Make rows durable outside any shard (upserted on the key where the sink has one)."""
        ...

    def close(self) -> None: ...


def flatten_lists(table: pa.Table) -> pa.Table:
    """Fixed-size list columns → one column per element (name_0, name_1, ...), for flat sinks."""
    cols: dict[str, pa.Array] = {}
    for name, col in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_fixed_size_list(col.type):
            width = col.type.list_size
            flat = col.combine_chunks().flatten()
            for j in range(width):
                cols[f"{name}_{j}"] = flat[j::width] if len(flat) else pa.array([], col.type.value_type)
        else:
            cols[name] = col
    return pa.table(cols)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FileSink:
    """A folder of parts plus ``_inferlane/`` (job identity, manifest, report) and ``_rejects/``."""

    def __init__(self, folder: Path, fmt: str, job_id: str, fingerprint: str, overwrite: bool = False) -> None:
        self.folder = folder
        self.fmt = fmt
        self.ext = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[fmt]
        self.description = f"{fmt} folder {folder}"
        meta = folder / META_DIR
        job_file = meta / "job.json"
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        if job_file.exists():
            job = orjson.loads(job_file.read_bytes())
            if job["job_id"] != job_id:
                raise ConfigError(f"{folder} holds the output of job {job['job_id']!r}; use another "
                                  f"--output, the same --job-id to resume it, or --overwrite")
            if job["fingerprint"] != fingerprint:
                raise ConfigError(f"job {job_id!r}: the input files changed since the job started "
                                  f"(plan {job['fingerprint']} != {fingerprint}); use a new --job-id "
                                  "or --overwrite")
        elif folder.exists() and any(p.name.startswith("part-") for p in folder.iterdir()):
            raise ConfigError(f"{folder} already holds parts from another tool or job; use an empty "
                              "folder or --overwrite")
        (folder / REJECTS_DIR).mkdir(parents=True, exist_ok=True)
        meta.mkdir(parents=True, exist_ok=True)
        if not job_file.exists():
            _atomic_write(job_file, lambda p: p.write_bytes(orjson.dumps(
                {"job_id": job_id, "fingerprint": fingerprint, "format": fmt})))
            _fsync_dir(meta)
        for stale in folder.glob(".tmp-*"):  # a crash mid-write leaves these; they were never parts
            stale.unlink()
        self._manifest_path = meta / "manifest.jsonl"
        self._manifest = open(self._manifest_path, "ab")  # noqa: SIM115 - kept open for appends
        self._seq = 0

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        done: dict[str, dict[str, Any]] = {}
        if self._manifest_path.exists():
            for line in self._manifest_path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line is not a record
                    rec = orjson.loads(line)
                    done[rec["shard"]] = rec
        return done

    def _write_table(self, table: pa.Table, path: Path) -> None:
        if self.fmt == "parquet":
            # snappy (pyarrow's default): several times faster to write than zstd; scoring
            # outputs are small next to their inputs.
            pq.write_table(table, path, compression="snappy")
        elif self.fmt == "csv":
            pacsv.write_csv(flatten_lists(table), path)
        else:
            rows = table.to_pylist()
            path.write_bytes(b"".join(orjson.dumps(r, default=str) + b"\n" for r in rows))

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        part = self.folder / f"part-{shard_id}.{self.ext}"
        _atomic_write(part, lambda p: self._write_table(table, p))
        if rejects:
            rpath = self.folder / REJECTS_DIR / f"part-{shard_id}.jsonl"
            _atomic_write(rpath, lambda p: p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rejects)))
            _fsync_dir(self.folder / REJECTS_DIR)
        _fsync_dir(self.folder)
        rec = {"shard": shard_id, "rows": table.num_rows, "rejected": len(rejects),
               "file": part.name, "committed_at": time.time()}
        self._manifest.write(orjson.dumps(rec) + b"\n")
        self._manifest.flush()
        os.fsync(self._manifest.fileno())

    def append(self, table: pa.Table) -> None:
        """One more durable part, not in the manifest (the stream lane's micro-batches)."""
        self._seq += 1
        part = self.folder / f"part-stream-{time.time_ns()}-{os.getpid()}-{self._seq}.{self.ext}"
        _atomic_write(part, lambda p: self._write_table(table, p))
        _fsync_dir(self.folder)

    def write_report(self, report: dict[str, Any]) -> str:
        path = self.folder / META_DIR / "report.json"
        _atomic_write(path, lambda p: p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2)))
        return str(path)

    def close(self) -> None:
        self._manifest.close()


class SqlSink:
    """Shared logic of the database sinks: a table with the key as primary key, an upsert per
    row, and manifest rows in the same transaction as the shard's rows."""

    placeholder = "?"
    description = ""

    def __init__(self, table: str, key: list[str], job_id: str, fingerprint: str, rejects_dir: Path) -> None:
        if not table.replace("_", "").isalnum():
            raise ConfigError(f"table name {table!r}: use letters, digits and underscores")
        self.table = table
        self.key = key
        self.job_id = job_id
        self.fingerprint = fingerprint
        self.rejects_dir = rejects_dir
        self._columns: list[str] | None = None

    # Dialect hooks -------------------------------------------------------------------------------
    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _bulk_upsert(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _sql_type(self, t: pa.DataType) -> str:
        raise NotImplementedError

    # Shared --------------------------------------------------------------------------------------
    def _init_meta(self) -> None:
        self._execute("CREATE TABLE IF NOT EXISTS inferlane_batch_jobs (job_id TEXT PRIMARY KEY, "
                      "fingerprint TEXT NOT NULL, output_table TEXT NOT NULL)")
        self._execute("CREATE TABLE IF NOT EXISTS inferlane_batch_manifest (job_id TEXT NOT NULL, "
                      "shard TEXT NOT NULL, rows_written BIGINT NOT NULL, rejected BIGINT NOT NULL, "
                      "committed_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, shard))")
        p = self.placeholder
        found = self._execute(f"SELECT fingerprint, output_table FROM inferlane_batch_jobs WHERE job_id = {p}",
                              (self.job_id,))
        if found:
            fp, table = found[0]
            if fp != self.fingerprint or table != self.table:
                raise ConfigError(f"job {self.job_id!r} already ran with other inputs or another table "
                                  f"({table}); use a new --job-id")
        else:
            self._execute(f"INSERT INTO inferlane_batch_jobs VALUES ({p}, {p}, {p})",
                          (self.job_id, self.fingerprint, self.table))

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        p = self.placeholder
        rows = self._execute(f"SELECT shard, rows_written, rejected FROM inferlane_batch_manifest "
                             f"WHERE job_id = {p}", (self.job_id,))
        return {r[0]: {"shard": r[0], "rows": r[1], "rejected": r[2]} for r in rows}

    def _ensure_table(self, table: pa.Table) -> list[str]:
        if self._columns is None:
            cols = [f'"{f.name}" {self._sql_type(f.type)}' for f in table.schema]
            pk = ", ".join(f'"{k}"' for k in self.key)
            self._execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" ({", ".join(cols)}, PRIMARY KEY ({pk}))')
            self._columns = table.column_names
        return self._columns

    def upsert_sql(self, columns: list[str], source: str | None = None) -> str:
        cols = ", ".join(f'"{c}"' for c in columns)
        keys = ", ".join(f'"{k}"' for k in self.key)
        updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in self.key)
        if source is None:
            values = "VALUES (" + ", ".join([self.placeholder] * len(columns)) + ")"
        else:
            values = f"SELECT {cols} FROM {source}"
        return (f'INSERT INTO "{self.table}" ({cols}) {values} '
                f"ON CONFLICT ({keys}) DO UPDATE SET {updates}")

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        flat = flatten_lists(table)
        if rejects:  # rejects are files next to the job; written before the shard is recorded
            self.rejects_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.rejects_dir / f"part-{shard_id}.jsonl",
                          lambda p: p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rejects)))
        p = self.placeholder
        self._write(flat, lambda: self._execute(
            f"INSERT INTO inferlane_batch_manifest VALUES ({p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (job_id, shard) DO NOTHING",
            (self.job_id, shard_id, flat.num_rows, len(rejects), time.time())))

    def append(self, table: pa.Table) -> None:
        """Upsert rows in one transaction, with no manifest (the stream lane's micro-batches)."""
        self._write(flatten_lists(table))

    def _write(self, flat: pa.Table, then: Callable[[], object] | None = None) -> None:
        """Upsert ``flat`` and run ``then`` in one transaction, on a live connection."""
        self._reconnect_if_lost()
        try:
            with self._transaction():
                if flat.num_rows:
                    columns = self._ensure_table(flat)
                    rows = list(zip(*(flat.column(c).to_pylist() for c in columns), strict=True))
                    self._bulk_upsert(columns, rows)
                if then is not None:
                    then()
        except BaseException:
            self._columns = None  # a rolled-back CREATE TABLE must run again on the retry
            raise

    def _reconnect_if_lost(self) -> None:
        """Dialect hook: open a new connection when the old one broke."""

    def write_report(self, report: dict[str, Any]) -> str:
        self.rejects_dir.mkdir(parents=True, exist_ok=True)
        path = self.rejects_dir.with_name(f"{self.job_id}-report.json")
        _atomic_write(path, lambda p: p.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2)))
        return str(path)


class SqliteSink(SqlSink):
    def __init__(self, db: Path, table: str, key: list[str], job_id: str, fingerprint: str, rejects_dir: Path) -> None:
        import sqlite3

        super().__init__(table, key, job_id, fingerprint, rejects_dir)
        db.parent.mkdir(parents=True, exist_ok=True)
        self.description = f"SQLite {db} table {table}"
        # NOTE: created here, used by the single writer thread afterwards (never concurrently).
        self._conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._init_meta()

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _bulk_upsert(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        self._conn.executemany(self.upsert_sql(columns), rows)

    def _sql_type(self, t: pa.DataType) -> str:
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            return "INTEGER"
        if pa.types.is_floating(t):
            return "REAL"
        return "TEXT"

    def close(self) -> None:
        self._conn.close()


def open_sink(output: str, *, job_id: str, fingerprint: str, key: list[str], table: str | None = None,
              fmt: str | None = None, overwrite: bool = False, rejects_dir: Path | None = None,
              flag: str = "--output") -> Sink:
    """A sink from an output URI: a folder (Parquet default; ``--format csv|jsonl``),
    ``sqlite:///path.db`` or ``postgresql://...`` (``--table`` names the table). ``flag`` names
    the option in error messages."""
    parsed = urlparse(output)
    default_rejects = Path(f"inferlane-batch-{job_id}") / "rejects"
    if parsed.scheme == "sqlite":
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        rest = output[len("sqlite:///"):] if output.startswith("sqlite:///") else ""
        if not rest:
            raise ConfigError(f"{flag} {output}: write sqlite:///path/to/file.db")
        path = Path(rest.split("?", 1)[0])
        tbl = table or parse_qs(parsed.query).get("table", ["predictions"])[0]
        return SqliteSink(path, tbl, key, job_id, fingerprint, rejects_dir or path.parent / f"{job_id}-rejects")
    if parsed.scheme in ("postgres", "postgresql"):
        from inferlane.lanes.batch.postgres import PostgresSink

        query = [(k, v) for k, v in parse_qsl(parsed.query) if k != "table"]
        tbl = table or parse_qs(parsed.query).get("table", ["predictions"])[0]
        dsn = urlunparse(parsed._replace(query=urlencode(query)))
        return PostgresSink(dsn, tbl, key, job_id, fingerprint, rejects_dir or default_rejects)
    if parsed.scheme not in ("", "file"):
        raise ConfigError(f"{flag} {output}: use a folder, sqlite:///file.db or postgresql://...")
    return FileSink(Path(parsed.path if parsed.scheme == "file" else output), fmt or "parquet", job_id,
                    fingerprint, overwrite)
