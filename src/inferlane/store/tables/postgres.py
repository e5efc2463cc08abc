"""PostgreSQL tables (psycopg 3): rows are COPYed into a temp table and upserted from it
(``INSERT ... SELECT ... ON CONFLICT DO UPDATE``) in one transaction; identifiers are quoted by
``psycopg.sql.Identifier``.

    table = PostgresTable("postgresql://app@db/scores", "predictions", ["id"])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from inferlane.store.tables.sql import SqlTable

STAGE = "inferlane_stage"


class PostgresTable(SqlTable):
    placeholder = "%s"

    def __init__(self, dsn: str, table: str, key: list[str]) -> None:
        super().__init__(table, key)
        self.dsn = dsn
        info = conninfo_to_dict(dsn)  # described without the password
        self.description = (f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}/"
                            f"{info.get('dbname', '')} table {table}")
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        # autocommit: statements outside a transaction commit at once; a write opens its own.
        # No server-side prepared statements: the staging table is a new relation every write.
        return psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None)

    def ident(self, name: str) -> str:
        return sql.Identifier(name).as_string(self._conn)

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._conn.cursor() as cur:
            cur.execute(statement.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    def has_table(self, name: str) -> bool:
        return self.execute("SELECT to_regclass(%s)", (sql.Identifier(name).as_string(self._conn),))[0][0] is not None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._conn.transaction():
            yield

    def _bulk_upsert(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        cols = ", ".join(self.ident(c) for c in columns)
        self.execute(f"CREATE TEMP TABLE {STAGE} (LIKE {self.ident(self.table)} INCLUDING DEFAULTS) ON COMMIT DROP")
        with self._conn.cursor() as cur:
            with cur.copy(f"COPY {STAGE} ({cols}) FROM STDIN".encode()) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(self.upsert_sql(columns, source=STAGE).encode())

    def _sql_type(self, t: pa.DataType) -> str:
        if pa.types.is_boolean(t):
            return "BOOLEAN"
        if pa.types.is_integer(t):
            return "BIGINT"
        if pa.types.is_float32(t) or pa.types.is_float16(t):
            return "REAL"
        if pa.types.is_floating(t):
            return "DOUBLE PRECISION"
        if pa.types.is_timestamp(t):
            return "TIMESTAMPTZ" if t.tz is not None else "TIMESTAMP"
        if pa.types.is_date(t):
            return "DATE"
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return "BYTEA"
        return "TEXT"

    def _reconnect_if_lost(self) -> None:
        if self._conn.closed:  # lost (server restart, network): a retry starts over on a new connection
            self._conn.close()
            self._conn = self._connect()
            self._columns = None

    def close(self) -> None:
        self._conn.close()
