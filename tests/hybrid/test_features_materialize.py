"""``inferlane features materialize`` into real stores (SQLite and Redis): Parquet, CSV, JSONL and SQL
sources, nulls, non-numeric columns, and hostile input, each with its exit code and message."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from inferlane.cli.main import main
from inferlane.store.kv import Stored, decode, open_kv
from inferlane.testing import postgres_server, serve_or_fail


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    """A new, empty store: a store:// namespace, or a Redis prefix."""
    name = f"feat-{time.time_ns()}"
    if request.param == "sqlite":
        return f"store://{name}"
    base: str = request.getfixturevalue("redis_url")
    return f"{base}?prefix={name}"


@pytest.fixture(scope="module")
def postgres_dsn() -> Iterator[str]:
    yield from serve_or_fail(postgres_server())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["features", "materialize", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def stored(url: str, *keys: str) -> dict[str, Stored | None]:
    kv = open_kv(url)
    try:
        return {k: None if v is None else decode(v) for k, v in zip(keys, kv.get_many(list(keys)), strict=True)}
    finally:
        kv.close()


def scalars(s: Stored | None) -> dict[str, object]:
    assert s is not None
    return {k: v.item() if v.size == 1 else list(v) for k, v in s.arrays.items()}


def test_parquet_numeric_columns_are_stored_per_key_and_nulls_left_out(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({
        "user_id": ["u1", "u2", "u3", "u4"],
        "avg_7d": pa.array([1.5, None, float("nan"), None], pa.float64()),
        "count_24h": pa.array([3, 4, 5, None], pa.int32()),
        "vip": [True, False, None, None],
        "segment": ["a", "b", "c", "d"],
        "price": pa.array([1, 2, 3, 4], pa.decimal128(5, 2)),
    }), tmp_path / "users.parquet")
    code, out, err = run(capsys, str(tmp_path / "users.parquet"), "--key", "user_id", "--store", store,
                         "--ttl", "7d", "--columns", "avg_7d,count_24h,vip")
    assert code == 0, err
    assert "keys_written   4" in out and "columns        avg_7d, count_24h, vip" in out, out
    got = stored(store, "u1", "u2", "u3", "u4", "nope")
    assert scalars(got["u1"]) == {"avg_7d": 1.5, "count_24h": 3, "vip": True}
    assert scalars(got["u2"]) == {"count_24h": 4, "vip": False}  # avg_7d null: left out
    assert scalars(got["u3"]) == {"count_24h": 5}  # NaN counts as null
    # Every field null: stored anyway (an empty array per field), so it replaces an older value.
    assert scalars(got["u4"]) == {"avg_7d": [], "count_24h": [], "vip": []}
    assert got["nope"] is None
    u1 = got["u1"]
    assert u1 is not None and u1.model == "features" and abs(u1.computed_at - time.time()) < 60
    assert u1.arrays["count_24h"].dtype == np.int32 and u1.arrays["avg_7d"].dtype == np.float64
    if store.startswith("redis"):
        base, _, prefix = store.partition("?prefix=")
        ttl = redis.Redis.from_url(base).pttl(f"{prefix}:u1")
        assert 6 * 86400 * 1000 < ttl <= 7 * 86400 * 1000
    # Without --columns: every numeric column, the others named with the reason.
    code, out, err = run(capsys, str(tmp_path / "users.parquet"), "--key", "user_id", "--store", store)
    assert code == 0, err
    assert "skipped column 'segment': not numeric: it is of type string" in err
    assert scalars(stored(store, "u1")["u1"])["price"] == 1.0


def test_csv_cells_are_read_as_numbers_across_chunks(store: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lines = ["user_id,region,late,spend,note"]
    lines += [f"{i},{i % 3},,{i * 1.5},n{i}" for i in range(10)]
    lines += ["10,1,7,2e3,x", "11,2,8,oops,y"]  # late gets values in the last chunk; oops is not a number
    (tmp_path / "users.csv").write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, str(tmp_path / "users.csv"), "--key", "user_id,region", "--store", store,
                         "--batch-rows", "4")
    assert code == 3, err  # one row rejected, the rest stored
    assert "rows_read      12" in out and "keys_written   11" in out and "rows_rejected  1" in out, out
    assert "rejected: " in err and "column 'spend': 'oops' is not a number" in err, err
    assert "skipped column 'note': not numeric: it holds text such as 'n0'" in err, err
    got = stored(store, "0|0", "4|1", "10|1", "11|2")
    assert scalars(got["0|0"]) == {"spend": 0.0}
    assert scalars(got["4|1"]) == {"spend": 6.0}
    assert scalars(got["10|1"]) == {"late": 7, "spend": 2000.0}
    assert got["11|2"] is None


def test_jsonl_records(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.jsonl").write_text('{"id": "a", "x": 1, "y": 2.5}\n{"id": 7, "x": 2}\n\n{"id": "c", "y": null}\n'
                                      'not json\n{"x": 3}\n')
    code, _, err = run(capsys, str(tmp_path / "f.jsonl"), "--key", "id", "--store", store)
    assert code == 3
    assert "row 4: not JSON" in err and "row 5: key column 'id' is missing or null" in err, err
    got = stored(store, "a", "7", "c")
    assert scalars(got["a"]) == {"x": 1, "y": 2.5}
    assert scalars(got["7"]) == {"x": 2}
    assert scalars(got["c"]) == {"x": [], "y": []}


def test_a_sqlite_table(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "f.db"
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE "user features" (user_id TEXT, avg_7d REAL, n INTEGER, label TEXT)')
        conn.executemany('INSERT INTO "user features" VALUES (?, ?, ?, ?)',
                         [(f"u{i}", i / 2, i, "t") for i in range(1000)] + [("null-avg", None, 5, "t")])
    conn.close()
    code, out, err = run(capsys, f"sqlite:///{db}?table=user features", "--key", "user_id", "--store", store,
                         "--batch-rows", "300")
    assert code == 0, err
    assert "keys_written   1001" in out and "skipped column 'label'" in err, (out, err)
    got = stored(store, "u999", "null-avg")
    assert scalars(got["u999"]) == {"avg_7d": 499.5, "n": 999}
    assert scalars(got["null-avg"]) == {"n": 5}
    assert run(capsys, f"sqlite:///{db}?table=nope", "--key", "user_id", "--store", store)[0] == 2
    code, _, err = run(capsys, f"sqlite:///{db}", "--key", "user_id", "--store", store)
    assert code == 2 and "name the table" in err, err


def test_a_postgresql_table_through_a_server_side_cursor(postgres_dsn: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS feats")
        conn.execute("CREATE TABLE feats (user_id BIGINT, score NUMERIC(6, 2), n INT, ok BOOLEAN, at TIMESTAMPTZ)")
        conn.execute("INSERT INTO feats SELECT i, i / 4.0, i, i % 2 = 0, now() FROM generate_series(1, 2500) i")
    store = f"store://pg-{time.time_ns()}"
    code, out, err = run(capsys, f"{postgres_dsn}?table=feats", "--key", "user_id", "--store", store,
                         "--batch-rows", "1000")
    assert code == 0, err
    assert "keys_written   2500" in out and "skipped column 'at': not numeric" in err, (out, err)
    assert scalars(stored(store, "2500")["2500"]) == {"score": 625.0, "n": 2500, "ok": True}
    code, _, err = run(capsys, f"{postgres_dsn}?table=missing", "--key", "user_id", "--store", store)
    assert code == 2 and "missing" in err, err


@pytest.mark.parametrize(("args", "needle"), [
    (["--key", "uid"], "no key column 'uid'"),
    (["--key", "user_id", "--columns", "avg,nope"], "no column 'nope'"),
    (["--key", "user_id", "--columns", "avg,name"], "column 'name' is not numeric"),
    (["--key", "user_id", "--columns", "user_id"], "is the key"),
    (["--key", "user_id", "--batch-rows", "0"], "--batch-rows"),
    (["--key", "user_id", "--store", "redis://127.0.0.1:6379/0/stream"], "?prefix="),
])
def test_usage_errors_exit_2_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             needle: str) -> None:
    pq.write_table(pa.table({"user_id": ["u1"], "avg": [1.0], "name": ["n"]}), tmp_path / "f.parquet")
    store = [] if "--store" in args else ["--store", "store://usage"]
    code, _, err = run(capsys, str(tmp_path / "f.parquet"), *args, *store)
    assert code == 2, err
    assert needle in err, err


def test_hostile_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = f"store://hostile-{time.time_ns()}"
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("user_id,avg\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "text.csv").write_text("user_id,name\nu1,alice\n")
    for source, needle in ((tmp_path / "empty.csv", "no rows"), (tmp_path / "header.csv", "no rows"),
                           (tmp_path / "bad.parquet", "not a readable Parquet file"),
                           (tmp_path / "missing.parquet", "not found"),
                           (tmp_path / "text.csv", "no numeric column")):
        code, _, err = run(capsys, str(source), "--key", "user_id", "--store", store)
        assert code == 2 and needle in err, (source, err)
    # Keys: too long, NUL, null, of another type: those rows are rejected, the others stored.
    pq.write_table(pa.table({"k": ["x" * 2000, "a\x00b", None, "fine"], "v": [1, 2, 3, 4]}), tmp_path / "keys.parquet")
    code, out, err = run(capsys, str(tmp_path / "keys.parquet"), "--key", "k", "--store", store)
    assert code == 3 and "keys_written   1" in out, (out, err)
    assert "row 0: key: a key is 1 to 1024 UTF-8 bytes, not 2000" in err, err
    assert "row 1: key: a key may not contain NUL" in err and "row 2: key column 'k' is missing or null" in err, err
    pq.write_table(pa.table({"k": [1.5], "v": [1]}), tmp_path / "float-key.parquet")
    code, _, err = run(capsys, str(tmp_path / "float-key.parquet"), "--key", "k", "--store", store)
    assert code == 3 and "a key is text or an integer" in err, err


def test_a_store_that_is_down_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from inferlane.testing import free_port

    pq.write_table(pa.table({"user_id": ["u1"], "avg": [1.0]}), tmp_path / "f.parquet")
    code, _, err = run(capsys, str(tmp_path / "f.parquet"), "--key", "user_id", "--store",
                       f"redis://127.0.0.1:{free_port()}/0?prefix=down")
    assert code == 1 and "features materialize:" in err and "down" in err, err
