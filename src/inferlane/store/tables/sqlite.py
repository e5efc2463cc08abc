"""SQLite tables (the embedded default): WAL, ``synchronous=FULL``, one connection used by one
writer thread at a time."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from inferlane.store.tables.sql import SqlTable


def quote_ident(name: str) -> str:
    """The SQL standard's quoted identifier: in double quotes, a double quote doubled."""
    return '"' + name.replace('"', '""') + '"'


class SqliteTable(SqlTable):
    def __init__(self, db: Path, table: str, key: list[str], *, read_only: bool = False) -> None:
        super().__init__(table, key)
        self.description = f"SQLite {db} table {table}"
        if read_only:  # a dry run: an existing file, opened without creating or changing anything
            self._conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        # NOTE: created here, used by the single writer thread afterwards (never concurrently).
        self._conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=10000")

    def ident(self, name: str) -> str:
        return quote_ident(name)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def has_table(self, name: str) -> bool:
        return bool(self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
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
