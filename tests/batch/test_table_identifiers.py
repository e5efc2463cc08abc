"""Table and column names come from input files and model configs: they are quoted as SQL
identifiers by each dialect (psycopg.sql.Identifier for PostgreSQL), never pasted into SQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from inferlane.core.errors import ConfigError
from inferlane.store.tables import open_row_writer

HOSTILE_KEY = 'id"; DROP TABLE victims; --'
HOSTILE_COLUMN = "score' OR '1'='1"
TABLE = 'out"put'


def rows(scores: list[float]) -> pa.Table:
    return pa.table({HOSTILE_KEY: pa.array([1, 2], pa.int64()), HOSTILE_COLUMN: pa.array(scores, pa.float64()),
                     "vec": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0]), 2)})


def test_sqlite_quotes_every_identifier_and_upserts(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE victims (x INTEGER)")
    writer = open_row_writer(f"sqlite:///{db}", key=[HOSTILE_KEY], table=TABLE)
    try:
        writer.write(rows([0.5, 0.25]))
        writer.write(rows([0.75, 0.25]))  # the same keys: upserted, not added
    finally:
        writer.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'victims'").fetchone() == ("victims",)
        got = conn.execute('SELECT * FROM "out""put" ORDER BY 1').fetchall()
        cols = [d[0] for d in conn.execute('SELECT * FROM "out""put"').description]
    assert cols == [HOSTILE_KEY, HOSTILE_COLUMN, "vec_0", "vec_1"]
    assert got == [(1, 0.75, 1.0, 2.0), (2, 0.25, 3.0, 4.0)]


def test_postgres_quotes_every_identifier_and_upserts(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS victims (x INTEGER)")
    writer = open_row_writer(postgres_dsn, key=[HOSTILE_KEY], table=TABLE)
    try:
        writer.write(rows([0.5, 0.25]))
        writer.write(rows([0.75, 0.25]))
    finally:
        writer.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('victims')").fetchone() == ("victims",)
        cur = conn.execute('SELECT * FROM "out""put" ORDER BY 1')
        assert [d.name for d in cur.description or []] == [HOSTILE_KEY, HOSTILE_COLUMN, "vec_0", "vec_1"]
        assert cur.fetchall() == [(1, 0.75, 1.0, 2.0), (2, 0.25, 3.0, 4.0)]


@pytest.mark.parametrize("name", ["x" * 64, "a\x00b"])
def test_unusable_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="table name"):
        open_row_writer(f"sqlite:///{tmp_path / 's.db'}", key=["id"], table=name)
    writer = open_row_writer(f"sqlite:///{tmp_path / 't.db'}", key=["id"], table="t")
    try:
        with pytest.raises(ConfigError, match="column name"):
            writer.write(pa.table({"id": [1], name: [1.0]}))
    finally:
        writer.close()
