"""The stream lane into table sinks (the batch lane's): SQLite, a Parquet folder and PostgreSQL, fed
from a real Redis stream. Rows are keyed by (key field, model_version), so a database upserts an
event delivered again after a crash instead of adding a row."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import psycopg
import pyarrow.parquet as pq
import pytest
import redis

from inferlane.core.model import ModelVersion
from inferlane.testing import redis_server, wait_until
from tests.batch.conftest import postgres_dsn  # noqa: F401 - the real PostgreSQL server fixture
from tests.stream.support import (
    finish,
    fraud_events,
    output_records,
    read_redis_stream,
    start_lane,
    stream_url,
    xadd_events,
)

pytestmark = pytest.mark.e2e  # every test here starts the CLI or a server as a subprocess

N = 1000


@pytest.fixture(scope="module")
def expected(model_repo: Path) -> dict[str, tuple[int, float, float]]:
    """id → (label, p0, p1): the model's own forward on the events' features."""
    events = fraud_events(N)
    model = ModelVersion.open(model_repo / "fraud", None, 1)
    try:
        out = model.forward({"features": np.asarray([e["features"] for e in events], dtype=np.float32)})
    finally:
        model.close()
    return {e["id"]: (int(out["label"][i]), float(out["probabilities"][i][0]), float(out["probabilities"][i][1]))
            for i, e in enumerate(events)}


def assert_rows_match(rows: list[tuple[Any, ...]], expected: dict[str, tuple[int, float, float]]) -> None:
    """(id, model_version, label, p0, p1) rows: one per event, with the model's outputs."""
    assert len(rows) == len(expected)
    assert {r[0] for r in rows} == set(expected)
    for key, version, label, p0, p1 in rows:
        want = expected[key]
        assert version == "1"
        assert label == want[0], key
        assert np.allclose([p0, p1], want[1:], rtol=1e-5, atol=1e-6), (key, (p0, p1), want)


ROWS = 'SELECT id, model_version, label, probabilities_0, probabilities_1 FROM "{}"'


def sqlite_rows(db: Path, table: str) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(ROWS.format(table)).fetchall()


def sqlite_count(db: Path, table: str) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


def run_into(model_repo: Path, redis_url: str, prefix: str, sink: str, cwd: Path, *args: str) -> str:
    """Drain ``<prefix>:events`` into ``sink`` (exit on idle); returns the lane's stderr."""
    proc = start_lane(model_repo / "fraud", stream_url(redis_url, f"{prefix}:events"), f"{prefix}-scorer", sink,
                      "--dlq", stream_url(redis_url, f"{prefix}:dlq"), "--idle-exit", "2", *args, cwd=cwd)
    code, _, stderr = finish(proc)
    assert code == 0, stderr[-4000:]
    return stderr


def test_stream_into_sqlite_matches_the_record_output(model_repo: Path, stream_redis_url: str, topic_prefix: str,
                                                      tmp_path: Path,
                                                      expected: dict[str, tuple[int, float, float]]) -> None:
    events = fraud_events(N)
    xadd_events(stream_redis_url, f"{topic_prefix}:events", events)
    db = tmp_path / "out.db"
    run_into(model_repo, stream_redis_url, topic_prefix, f"sqlite:///{db}", tmp_path, "--table", "scores",
             "--max-batch", "100")

    rows = sqlite_rows(db, "scores")
    assert_rows_match(rows, expected)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        cols = [r[1] for r in conn.execute('PRAGMA table_info("scores")')]
        pk = [r[1] for r in sorted(conn.execute('PRAGMA table_info("scores")'), key=lambda r: r[5]) if r[5]]
        assert {"model_name", "event_time", "scored_at"} <= set(cols)
        assert pk == ["id", "model_version"]

    # The same events through a Redis record sink: the same predictions, key by key.
    redis_out = f"{topic_prefix}:scores"
    xadd_events(stream_redis_url, f"{topic_prefix}-again:events", events)
    run_into(model_repo, stream_redis_url, f"{topic_prefix}-again", stream_url(stream_redis_url, redis_out), tmp_path)
    records = output_records([f[b"data"] for f in read_redis_stream(stream_redis_url, redis_out)])
    by_key = {r["id"]: r for r in records}
    assert len(records) == len(by_key) == N
    for key, version, label, p0, p1 in rows:
        rec = by_key[key]
        assert (rec["model_version"], rec["label"]) == (version, label)
        assert np.allclose(rec["probabilities"], [p0, p1], rtol=1e-6, atol=1e-7)


def test_sigkill_mid_stream_into_sqlite_then_restart_upserts(model_repo: Path, topic_prefix: str, tmp_path: Path,
                                                             expected: dict[str, tuple[int, float, float]]) -> None:
    # A Redis of its own: CLIENT PAUSE below must not touch the other tests' streams.
    with redis_server(tmp_path) as url:
        client = redis.Redis.from_url(url)
        src, group, db = f"{topic_prefix}:events", f"{topic_prefix}-scorer", tmp_path / "out.db"
        events = fraud_events(N)
        xadd_events(url, src, events[:300])
        args = ["--table", "scores", "--max-batch", "64", "--consumer", "w"]
        sink = f"sqlite:///{db}"
        lane = start_lane(model_repo / "fraud", stream_url(url, src), group, sink, "--dlq",
                          stream_url(url, f"{topic_prefix}:dlq"), *args, cwd=tmp_path)
        try:
            wait_until(lambda: sqlite_count(db, "scores") == 300, "the first 300 rows are in")
            # Hold the database's write lock: the lane reads more events but cannot write them.
            lock = sqlite3.connect(db, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")
            xadd_events(url, src, events[300:])
            wait_until(lambda: int(client.xpending(src, group)["pending"]) >= 64, "the lane holds unwritten events")
            # Redis refuses writes (XACK) from now on; the database takes the rows the lane holds.
            client.client_pause(120_000, all=False)
            lock.execute("ROLLBACK")
            lock.close()
            wait_until(lambda: sqlite_count(db, "scores") > 300, "rows written but not acknowledged")
        finally:
            lane.send_signal(signal.SIGKILL)
            lane.communicate()
            client.client_unpause()
        assert lane.returncode == -signal.SIGKILL

        # Events whose rows are in the table are still pending: the restart delivers them again.
        pending = {e["message_id"] for e in client.xpending_range(src, group, "-", "+", 10 * N)}
        stream = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(src))
        pending_keys = {str(orjson.loads(f[b"data"])["id"]) for i, f in stream if i in pending}
        written = {r[0] for r in sqlite_rows(db, "scores")}
        assert 300 < len(written) < N
        assert pending_keys & written

        run_into(model_repo, url, topic_prefix, sink, tmp_path, *args)
        assert_rows_match(sqlite_rows(db, "scores"), expected)  # N rows, one per key: upserted
        assert int(client.xpending(src, group)["pending"]) == 0
        client.close()


def test_stream_into_a_parquet_folder(model_repo: Path, stream_redis_url: str, topic_prefix: str, tmp_path: Path,
                                      expected: dict[str, tuple[int, float, float]]) -> None:
    xadd_events(stream_redis_url, f"{topic_prefix}:events", fraud_events(N))
    folder = tmp_path / "scores"
    run_into(model_repo, stream_redis_url, topic_prefix, str(folder), tmp_path, "--max-batch", "128")

    parts = sorted(folder.glob("part-*.parquet"))
    assert len(parts) > 1  # one part per written micro-batch
    table = pq.read_table(folder)
    assert table.num_rows == N  # a clean run writes each event once
    probs = table.column("probabilities").to_pylist()
    rows = [(k, v, lab, p[0], p[1]) for k, v, lab, p in zip(table.column("id").to_pylist(),
                                                           table.column("model_version").to_pylist(),
                                                           table.column("label").to_pylist(), probs, strict=True)]
    assert_rows_match(rows, expected)


def test_stream_into_postgresql(model_repo: Path, stream_redis_url: str, topic_prefix: str, tmp_path: Path,
                                postgres_dsn: str,  # noqa: F811 - the imported fixture
                                expected: dict[str, tuple[int, float, float]]) -> None:
    xadd_events(stream_redis_url, f"{topic_prefix}:events", fraud_events(N))
    table = f"scores_{topic_prefix}"
    run_into(model_repo, stream_redis_url, topic_prefix, postgres_dsn, tmp_path, "--table", table, "--max-batch", "100")

    with psycopg.connect(postgres_dsn) as conn:
        rows = conn.execute(ROWS.format(table)).fetchall()
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attname",
            (f'"{table}"',)).fetchall()
    assert_rows_match(rows, expected)
    assert [r[0] for r in pk] == ["id", "model_version"]

