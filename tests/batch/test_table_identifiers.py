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


HOSTILE_OUTPUT = 'x"; DROP TABLE victims; --'
ECHO = '''
class Model:
    def predict(self, batch):
        return {OUTPUT: batch["features"].sum(axis=1)}
'''


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_batch_job_with_hostile_tensor_and_key_names(backend: str, tmp_path: Path, request: pytest.FixtureRequest
                                                       ) -> None:
    """Names from model.yaml (outputs) and --key (input columns) reach SQL only quoted."""
    import pyarrow.parquet as pq
    import yaml

    from inferlane.lanes.batch import BatchJob, run_batch

    model = tmp_path / "hostile"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(f"OUTPUT = {HOSTILE_OUTPUT!r}\n{ECHO}")
    (model / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 2]}],
        "outputs": [{"name": HOSTILE_OUTPUT, "datatype": "FP64", "shape": [-1]}]}))
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({HOSTILE_KEY: pa.array([1, 2, 3], pa.int64()), "a": [1.0, 2.0, 3.0],
                             "b": [0.5, 0.5, 0.5]}), tmp_path / "in" / "x.parquet")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 's.db'}"
        with sqlite3.connect(tmp_path / "s.db") as conn:
            conn.execute("CREATE TABLE victims (x INTEGER)")
    else:
        url = request.getfixturevalue("postgres_dsn")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS victims (x INTEGER)")
    report = run_batch(BatchJob(model=str(model), input=str(tmp_path / "in"), output=url, key=[HOSTILE_KEY],
                                job_id=f"hostile-{backend}", table=TABLE + "_batch", progress=False,
                                state_dir=str(tmp_path / "state")))
    assert report["status"] == "succeeded" and report["rows_written"] == 3
    query = f'SELECT "{HOSTILE_KEY.replace(chr(34), chr(34) * 2)}", "{HOSTILE_OUTPUT.replace(chr(34), chr(34) * 2)}" ' \
            'FROM "out""put_batch" ORDER BY 1'
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "s.db") as conn:
            assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'victims'").fetchone() == ("victims",)
            assert conn.execute(query).fetchall() == [(1, 1.5), (2, 2.5), (3, 3.5)]
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('victims')").fetchone() == ("victims",)
            assert conn.execute(query.encode()).fetchall() == [(1, 1.5), (2, 2.5), (3, 3.5)]
