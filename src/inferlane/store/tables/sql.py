"""Database tables: rows upserted on a key (:class:`SqlTable`), and batch jobs over them
(:class:`SqlShardSink`, whose manifest row commits in the same transaction as the shard's rows).

Every identifier (table, key and output column names, which come from input files and model
configs) is quoted by the dialect (``ident``), never pasted into SQL as it is. The dialects are
sqlite.py and postgres.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from inferlane.core.errors import ConfigError
from inferlane.store.tables.arrow import flatten_lists
from inferlane.store.tables.base import write_jsonl, write_report_beside

MAX_IDENTIFIER = 63
"""PostgreSQL truncates longer identifiers; refusing them keeps both dialects alike."""


class SqlTable:
    """Rows upserted on ``key`` into ``table`` (created on the first write from the rows' schema)."""

    placeholder = "?"
    description = ""

    def __init__(self, table: str, key: list[str]) -> None:
        if not table or len(table) > MAX_IDENTIFIER or "\x00" in table:
            raise ConfigError(f"table name {table[:100]!r}: 1 to {MAX_IDENTIFIER} characters")
        self.table = table
        self.key = key
        self._columns: list[str] | None = None

    # Dialect hooks -------------------------------------------------------------------------------
    def ident(self, name: str) -> str:
        """``name`` quoted as an SQL identifier."""
        raise NotImplementedError

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def _bulk_upsert(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def _sql_type(self, t: pa.DataType) -> str:
        raise NotImplementedError

    def has_table(self, name: str) -> bool:
        """Whether the table ``name`` exists (read only)."""
        raise NotImplementedError

    def _reconnect_if_lost(self) -> None:
        """Open a new connection when the old one broke (a retry then starts over on it)."""

    def close(self) -> None:
        raise NotImplementedError

    # Shared --------------------------------------------------------------------------------------
    def _ensure_table(self, table: pa.Table) -> list[str]:
        if self._columns is None:
            for name in table.column_names:
                if not name or len(name) > MAX_IDENTIFIER or "\x00" in name:
                    raise ConfigError(f"column name {name[:100]!r}: 1 to {MAX_IDENTIFIER} characters")
            cols = [f"{self.ident(f.name)} {self._sql_type(f.type)}" for f in table.schema]
            pk = ", ".join(self.ident(k) for k in self.key)
            self.execute(f"CREATE TABLE IF NOT EXISTS {self.ident(self.table)} ({', '.join(cols)}, "
                         f"PRIMARY KEY ({pk}))")
            self._columns = table.column_names
        return self._columns

    def upsert_sql(self, columns: list[str], source: str | None = None) -> str:
        """INSERT ... ON CONFLICT (key) DO UPDATE of every other column, from placeholders or from
        the table ``source`` (already quoted)."""
        cols = ", ".join(self.ident(c) for c in columns)
        keys = ", ".join(self.ident(k) for k in self.key)
        updates = ", ".join(f"{self.ident(c)} = excluded.{self.ident(c)}" for c in columns if c not in self.key)
        values = (f"SELECT {cols} FROM {source}" if source is not None
                  else "VALUES (" + ", ".join([self.placeholder] * len(columns)) + ")")
        action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
        return f"INSERT INTO {self.ident(self.table)} ({cols}) {values} ON CONFLICT ({keys}) {action}"

    def write(self, table: pa.Table) -> None:
        """Upsert the rows in one transaction (list columns become one column per element)."""
        self.write_then(flatten_lists(table))

    def write_then(self, flat: pa.Table, then: Callable[[], object] | None = None) -> None:
        """Upsert ``flat`` and run ``then`` in one transaction, on a live connection."""
        self._reconnect_if_lost()
        try:
            with self.transaction():
                if flat.num_rows:
                    columns = self._ensure_table(flat)
                    rows = list(zip(*(flat.column(c).to_pylist() for c in columns), strict=True))
                    self._bulk_upsert(columns, rows)
                if then is not None:
                    then()
        except BaseException:
            self._columns = None  # a rolled-back CREATE TABLE must run again on the retry
            raise


class SqlShardSink:
    """A batch job writing into a SqlTable: job identity and a manifest in two tables of their own."""

    def __init__(self, table: SqlTable, job_id: str, fingerprint: str, rejects_dir: Path) -> None:
        self.db = table
        self.job_id = job_id
        self.fingerprint = fingerprint
        self.rejects_dir = rejects_dir
        self.description = table.description
        table.execute("CREATE TABLE IF NOT EXISTS inferlane_batch_jobs (job_id TEXT PRIMARY KEY, "
                      "fingerprint TEXT NOT NULL, output_table TEXT NOT NULL)")
        table.execute("CREATE TABLE IF NOT EXISTS inferlane_batch_manifest (job_id TEXT NOT NULL, "
                      "shard TEXT NOT NULL, rows_written BIGINT NOT NULL, rejected BIGINT NOT NULL, "
                      "committed_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, shard))")
        if not _same_job(table, job_id, fingerprint):
            p = table.placeholder
            table.execute(f"INSERT INTO inferlane_batch_jobs VALUES ({p}, {p}, {p})",
                          (job_id, fingerprint, table.table))

    @staticmethod
    def inspect(table: SqlTable, job_id: str, fingerprint: str) -> dict[str, dict[str, Any]]:
        """The shards ``job_id`` finished in ``table``'s database, reading only (for a dry run);
        ConfigError when the job ran there with other inputs or another table."""
        if not table.has_table("inferlane_batch_jobs") or not _same_job(table, job_id, fingerprint):
            return {}
        return _finished(table, job_id)

    def finished_shards(self) -> dict[str, dict[str, Any]]:
        return _finished(self.db, self.job_id)

    def commit(self, shard_id: str, table: pa.Table, rejects: list[dict[str, Any]]) -> None:
        flat = flatten_lists(table)
        if rejects:  # rejects are files next to the job; written before the shard is recorded
            self.rejects_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl(self.rejects_dir / f"part-{shard_id}.jsonl", [orjson.dumps(r) for r in rejects])
        p = self.db.placeholder
        self.db.write_then(flat, lambda: self.db.execute(
            f"INSERT INTO inferlane_batch_manifest VALUES ({p}, {p}, {p}, {p}, {p}) "
            "ON CONFLICT (job_id, shard) DO NOTHING",
            (self.job_id, shard_id, flat.num_rows, len(rejects), time.time())))

    def write_report(self, report: dict[str, Any]) -> str:
        return write_report_beside(self.rejects_dir, self.job_id, report)

    def close(self) -> None:
        self.db.close()


def _same_job(table: SqlTable, job_id: str, fingerprint: str) -> bool:
    """True when ``job_id`` is recorded with these inputs and table; False when it is new."""
    found = table.execute("SELECT fingerprint, output_table FROM inferlane_batch_jobs "
                          f"WHERE job_id = {table.placeholder}", (job_id,))
    if found:
        fp, name = found[0]
        if fp != fingerprint or name != table.table:
            raise ConfigError(f"job {job_id!r} already ran with other inputs, --shard-rows, --limit or another "
                              f"table ({name}); use a new --job-id")
        return True
    return False


def _finished(table: SqlTable, job_id: str) -> dict[str, dict[str, Any]]:
    if not table.has_table("inferlane_batch_manifest"):
        return {}
    rows = table.execute(f"SELECT shard, rows_written, rejected FROM inferlane_batch_manifest "
                         f"WHERE job_id = {table.placeholder}", (job_id,))
    return {r[0]: {"shard": r[0], "rows": r[1], "rejected": r[2]} for r in rows}
