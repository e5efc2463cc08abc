"""Table outputs shared by the batch and stream lanes: a folder of parts (Parquet, CSV, JSONL),
SQLite or PostgreSQL; a batch job's output may also be a key-value store (store/kv/shards.py).

    writer = open_row_writer("sqlite:///out/scores.db", key=["id", "model_version"])   # stream
    sink = open_shard_sink("out/scores/", job_id="nightly", fingerprint=fp, key=["id"])    # batch

The URL forms are parsed by core/urls.py; ``flag`` names the option in error messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferlane.core.errors import ConfigError
from inferlane.core.urls import postgres_url, scheme, sqlite_url
from inferlane.store.tables.arrow import flatten_lists, key_array, scored_table, to_arrow
from inferlane.store.tables.base import RowWriter, ShardSink
from inferlane.store.tables.sql import SqlShardSink, SqlTable

if TYPE_CHECKING:
    from inferlane.core.spec import TensorSpec

DEFAULT_TABLE = "predictions"
FORMS = "a folder, sqlite:///file.db or postgresql://..."
KV_FORMS = "store://NAME or redis://host:port/db?prefix=NAME"


def open_table(url: str, *, key: list[str], table: str | None, flag: str) -> SqlTable | None:
    """The database table ``url`` names (``--table`` or ``?table=``, default predictions), or None
    when ``url`` is not a database URL."""
    s = scheme(url)
    if s == "sqlite":
        sq = sqlite_url(url, flag)
        from inferlane.store.tables.sqlite import SqliteTable

        return SqliteTable(sq.path, table or sq.params.get("table") or DEFAULT_TABLE, key)
    if s in ("postgres", "postgresql"):
        pg = postgres_url(url, flag)
        from inferlane.store.tables.postgres import PostgresTable

        return PostgresTable(pg.dsn, table or pg.params.get("table") or DEFAULT_TABLE, key)
    return None


def _folder(url: str, flag: str) -> Path:
    s = scheme(url)
    if s not in ("", "file"):
        raise ConfigError(f"{flag} {url}: use {FORMS}")
    return Path(url[len("file://"):] if s == "file" else url)


def open_row_writer(url: str, *, key: list[str], table: str | None = None, fmt: str = "parquet",
                    flag: str = "--sink") -> RowWriter:
    """Rows upserted on ``key`` into a database table, or written as parts into a folder."""
    db = open_table(url, key=key, table=table, flag=flag)
    if db is not None:
        return db
    from inferlane.store.tables.files import PartsFolder

    return PartsFolder(_folder(url, flag), fmt)


def _rejects_default(url: str, job_id: str, state_dir: Path | None, flag: str) -> Path:
    """A database or store output's rejects folder: next to a SQLite file, else under ``state_dir``."""
    if scheme(url) == "sqlite":
        return sqlite_url(url, flag).path.parent / f"{job_id}-rejects"
    if state_dir is None:
        raise ValueError("a PostgreSQL or key-value store output needs rejects_dir or state_dir")
    return state_dir / "batch" / f"{job_id}-rejects"


def _check_kv_options(url: str, table: str | None, ttl_s: float | None, flag: str) -> bool:
    """Whether ``url`` is a key-value store; ConfigError for an option that does not apply to it."""
    from inferlane.store.kv import is_kv_url

    kv = is_kv_url(url)
    if kv and table is not None:
        raise ConfigError(f"--table applies to database outputs, not to a key-value store ({KV_FORMS})")
    if not kv and ttl_s is not None:
        raise ConfigError(f"--ttl applies to a key-value store output ({KV_FORMS}), not to {flag} {url}")
    return kv


def open_shard_sink(url: str, *, job_id: str, fingerprint: str, key: list[str], table: str | None = None,
                    fmt: str = "parquet", overwrite: bool = False, rejects_dir: Path | None = None,
                    state_dir: Path | None = None, flag: str = "--output",
                    outputs: Sequence[TensorSpec] = (), ttl_s: float | None = None) -> ShardSink:
    """A batch job's output: a folder (Parquet by default), a SQLite or a PostgreSQL table, or a
    key-value store (``outputs``: the model's output specs; ``ttl_s``: the values' time to live). A
    database or store output keeps its rejects in ``rejects_dir`` (default: next to a SQLite file,
    or ``<state_dir>/batch/<job_id>-rejects``) and its report beside them."""
    if _check_kv_options(url, table, ttl_s, flag):
        from inferlane.store.kv.shards import KVShardSink, job_records

        records = job_records(url, job_id, flag=flag)
        assert records is not None
        try:
            return KVShardSink(records, job_id=job_id, fingerprint=fingerprint, key=key, outputs=outputs,
                               rejects_dir=rejects_dir or _rejects_default(url, job_id, state_dir, flag),
                               ttl_s=ttl_s, overwrite=overwrite)
        except BaseException:
            records.close()
            raise
    db = open_table(url, key=key, table=table, flag=flag)
    if db is not None:
        try:
            return SqlShardSink(db, job_id, fingerprint, rejects_dir or _rejects_default(url, job_id, state_dir, flag))
        except BaseException:
            db.close()
            raise
    from inferlane.store.tables.files import FileShardSink

    return FileShardSink(_folder(url, flag), fmt, job_id, fingerprint, overwrite)


def inspect_shard_sink(url: str, *, job_id: str, fingerprint: str, key: list[str], table: str | None = None,
                       overwrite: bool = False, flag: str = "--output",
                       ttl_s: float | None = None) -> tuple[str, dict[str, dict[str, Any]]]:
    """What a batch job would find in its output, reading only (a dry run): (a description, the
    shards it already finished). ConfigError when the job may not write there."""
    if _check_kv_options(url, table, ttl_s, flag):
        from inferlane.store.kv.shards import KVShardSink, job_records

        records = job_records(url, job_id, flag=flag, read_only=True)
        if records is None:
            return f"{url} (a new store file)", {}
        try:
            return records.description, KVShardSink.inspect(records, fingerprint, overwrite=overwrite)
        finally:
            records.close()
    s = scheme(url)
    if s == "sqlite":
        sq = sqlite_url(url, flag)
        name = table or sq.params.get("table") or DEFAULT_TABLE
        if not sq.path.exists():
            return f"SQLite {sq.path} table {name} (new file)", {}
        from inferlane.store.tables.sqlite import SqliteTable

        db: SqlTable = SqliteTable(sq.path, name, key, read_only=True)
    elif s in ("postgres", "postgresql"):
        pg = open_table(url, key=key, table=table, flag=flag)
        assert pg is not None
        db = pg
    else:
        from inferlane.store.tables.files import inspect_folder, read_manifest

        folder = _folder(url, flag)
        inspect_folder(folder, job_id, fingerprint, overwrite=overwrite)
        if overwrite and folder.exists():
            return f"folder {folder} (cleared first: --overwrite)", {}
        return f"folder {folder}", read_manifest(folder)
    try:
        return db.description, SqlShardSink.inspect(db, job_id, fingerprint)
    finally:
        db.close()


__all__ = ["DEFAULT_TABLE", "RowWriter", "ShardSink", "SqlTable", "flatten_lists", "inspect_shard_sink", "key_array",
           "open_row_writer", "open_shard_sink", "open_table", "scored_table", "to_arrow"]
