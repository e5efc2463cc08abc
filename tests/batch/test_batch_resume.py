"""Crash and resume: a batch job SIGKILLed mid-run and re-run gives exactly the rows of an
uninterrupted run (Parquet folder and PostgreSQL), and a PostgreSQL connection killed during a
job is retried on a new connection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from inferlane.demo.models import synthetic_transactions
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.testing import exited, wait_until
from tests.conftest import write_python_model

N_ROWS = 120_000
SHARD_ROWS = 10_000
N_SHARDS = N_ROWS // SHARD_ROWS
# Small forward passes on one thread: each shard takes long enough to be killed between two.
SPEED = {"batch_size": 256, "threads": 1}
VALUE_COLUMNS = ["id", "label", "probabilities_0", "probabilities_1", "model_name", "model_version"]


@pytest.fixture(scope="module")
def big_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Parquet file: id (int64) + f0..f29 (float32), one row group per shard."""
    x, _ = synthetic_transactions(N_ROWS, seed=11)
    cols: dict[str, Any] = {"id": np.arange(5_000_000, 5_000_000 + N_ROWS, dtype=np.int64)}
    cols.update({f"f{i}": x[:, i] for i in range(x.shape[1])})
    path = tmp_path_factory.mktemp("resume-input") / "transactions.parquet"
    pq.write_table(pa.table(cols), path, row_group_size=SHARD_ROWS)
    assert pq.ParquetFile(path).metadata.num_row_groups == N_SHARDS
    return path


@pytest.fixture(scope="module")
def reference(model_repo: Path, big_input: Path, tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    """An uninterrupted run to a Parquet folder, sorted by id, without scored_at."""
    out = tmp_path_factory.mktemp("resume-reference") / "out"
    report = run_batch(job(model_repo, big_input, str(out), "reference"))
    assert report["status"] == "succeeded" and report["rows_written"] == N_ROWS
    return flatten(pq.read_table(out).drop_columns(["scored_at"]).sort_by("id"))


def flatten(table: pa.Table) -> pa.Table:
    from inferlane.store.tables import flatten_lists

    return flatten_lists(table)


def job(model_repo: Path, inp: Path, output: str, job_id: str, **kw: Any) -> BatchJob:
    args: dict[str, Any] = {"model": str(model_repo / "fraud"), "input": str(inp), "output": output, "key": ["id"],
                            "job_id": job_id, "shard_rows": SHARD_ROWS, "progress": False, **SPEED}
    args.update(kw)
    return BatchJob(**args)


def cli(model_repo: Path, inp: Path, output: str, job_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inferlane", "batch", "run", "--model", str(model_repo / "fraud"),
            "--input", str(inp), "--output", output, "--key", "id", "--job-id", job_id,
            "--shard-rows", str(SHARD_ROWS), "--batch-size", str(SPEED["batch_size"]),
            "--threads", str(SPEED["threads"]), "--quiet", "--json", *extra]


SLOWED_FRAUD = """
import time
import numpy as np

class Model:
    def load(self, version_dir):
        pass

    def predict(self, batch):
        time.sleep(0.005)  # 40 calls per shard: a shard takes 0.2 s or more
        x = batch["features"]
        p = 1.0 / (1.0 + np.exp(-x[:, :1]))
        return {"label": (p[:, 0] > 0.5).astype(np.int64),
                "probabilities": np.concatenate([1.0 - p, p], axis=1).astype(np.float32)}
"""


@pytest.fixture(scope="module")
def slowed_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``fraud`` with the same signature as a Python model that takes 5 ms per forward pass: a job
    of N_SHARDS shards lasts seconds, so a signal sent after the first commit lands mid-run on any
    machine (the ONNX model scores a shard in a few milliseconds)."""
    repo = tmp_path_factory.mktemp("slowed")
    write_python_model(repo, "fraud", SLOWED_FRAUD, {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
    })
    return repo


def kill_mid_run(cmd: list[str], committed: Callable[[], int], log: Path) -> int:
    """Start the job, SIGKILL it once at least one shard is committed but not all; returns how
    many shards the manifest held when it died."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent)
    try:
        deadline = time.monotonic() + 60
        while True:
            n = committed()
            if 1 <= n < N_SHARDS:
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the job ended (exit {proc.returncode}) with {n} shards committed before it "
                            f"could be killed mid-run:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no shard committed in 60 s:\n{log.read_text()}")
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    after = committed()
    assert 1 <= after < N_SHARDS, f"{after} shards committed when the job died"
    return after


def resume(cmd: list[str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, cwd=cwd)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def check_resume_report(report: dict[str, Any], committed_at_kill: int) -> None:
    assert report["status"] == "succeeded", report
    assert report["shards_total"] == N_SHARDS
    assert report["shards_skipped_already_done"] > 0
    assert report["shards_skipped_already_done"] >= committed_at_kill
    assert report["shards_skipped_already_done"] + report["shards_committed"] == N_SHARDS
    assert report["shards_failed"] == 0
    assert report["rows_written"] == report["rows_read"] == N_ROWS


# Parquet folder -----------------------------------------------------------------------------------

def manifest_lines(out: Path) -> int:
    path = out / "_inferlane" / "manifest.jsonl"
    if not path.exists():
        return 0
    n = 0
    for line in path.read_bytes().splitlines():
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:  # a torn last line is not a record
            continue
        n += 1
    return n


@pytest.mark.e2e
def test_parquet_job_killed_mid_run_resumes_to_the_same_rows(model_repo: Path, big_input: Path,
                                                              reference: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = cli(model_repo, big_input, str(out), "resume-parquet")
    committed = kill_mid_run(cmd, lambda: manifest_lines(out), tmp_path / "killed.log")

    report = resume(cmd, tmp_path)
    check_resume_report(report, committed)
    assert manifest_lines(out) == N_SHARDS
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-00000-{i * SHARD_ROWS:012d}.parquet"
                                                          for i in range(N_SHARDS)]
    assert not list(out.glob(".tmp-*"))

    rows = pq.read_table(out)
    assert rows.num_rows == N_ROWS
    assert len(pc.unique(rows["id"])) == N_ROWS
    got = flatten(rows.drop_columns(["scored_at"]).sort_by("id"))
    assert got.equals(reference)
    assert reference["id"].to_pylist() == list(range(5_000_000, 5_000_000 + N_ROWS))


# PostgreSQL ---------------------------------------------------------------------------------------

def manifest_rows(conn: psycopg.Connection[Any], job_id: str) -> int:
    """Shards committed by the job (``conn`` in autocommit mode)."""
    try:
        row = conn.execute("SELECT count(*) FROM inferlane_batch_manifest WHERE job_id = %s", (job_id,)).fetchone()
    except psycopg.errors.UndefinedTable:  # the job has not created its tables yet
        return 0
    assert row is not None
    return int(row[0])


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(VALUE_COLUMNS)
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()


def check_table(dsn: str, table: str, reference: pa.Table) -> None:
    """Exactly the reference rows: no duplicates, nothing missing, same values (REAL = float32)."""
    with psycopg.connect(dsn) as conn:
        count, distinct = conn.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = %s", (table,)).fetchall())
    assert count == distinct == N_ROWS
    assert types == {"id": "bigint", "label": "bigint", "probabilities_0": "real", "probabilities_1": "real",
                     "model_name": "text", "model_version": "text", "scored_at": "timestamp with time zone"}
    rows = table_rows(dsn, table)
    got = {c: [r[i] for r in rows] for i, c in enumerate(VALUE_COLUMNS)}
    for c in VALUE_COLUMNS:
        want = reference[c].to_pylist()
        if c.startswith("probabilities"):
            np.testing.assert_array_equal(np.asarray(got[c], np.float32), np.asarray(want, np.float32), err_msg=c)
        else:
            assert got[c] == want, c


@pytest.mark.e2e
def test_postgres_job_killed_mid_run_resumes_to_the_same_rows(model_repo: Path, big_input: Path,
                                                               reference: pa.Table, postgres_dsn: str,
                                                               tmp_path: Path) -> None:
    # An uninterrupted run into another table, then a killed-and-resumed one.
    ref = run_batch(job(model_repo, big_input, postgres_dsn, "pg-reference", table="scores_reference",
                        rejects_dir=str(tmp_path / "ref-rejects")))
    assert ref["status"] == "succeeded" and ref["rows_written"] == N_ROWS

    cmd = cli(model_repo, big_input, postgres_dsn, "pg-resume", "--table", "scores_resumed",
              "--rejects-dir", str(tmp_path / "rejects"))
    with psycopg.connect(postgres_dsn, autocommit=True) as poll:
        committed = kill_mid_run(cmd, lambda: manifest_rows(poll, "pg-resume"), tmp_path / "killed.log")
        report = resume(cmd, tmp_path)
        check_resume_report(report, committed)
        assert manifest_rows(poll, "pg-resume") == N_SHARDS

    assert table_rows(postgres_dsn, "scores_resumed") == table_rows(postgres_dsn, "scores_reference")
    check_table(postgres_dsn, "scores_resumed", reference)

    # A third run finds everything done and writes nothing new.
    again = resume(cmd, tmp_path)
    assert again["shards_skipped_already_done"] == N_SHARDS and again["shards_committed"] == 0
    check_table(postgres_dsn, "scores_resumed", reference)


def test_postgres_connection_killed_during_a_job_is_retried(model_repo: Path, big_input: Path,
                                                            reference: pa.Table, postgres_dsn: str,
                                                            tmp_path: Path) -> None:
    job_id = "pg-transient"
    spec = job(model_repo, big_input, postgres_dsn, job_id, table="scores_transient", retries=3,
               retry_backoff_s=0.05, rejects_dir=str(tmp_path / "rejects"))
    terminated = 0
    with ThreadPoolExecutor(1) as pool, psycopg.connect(postgres_dsn, autocommit=True) as admin:
        running = pool.submit(run_batch, spec)
        deadline = time.monotonic() + 60
        while not terminated:
            assert not running.done(), f"the job ended before its connection could be killed: {running.result()}"
            assert time.monotonic() < deadline, "no shard committed in 60 s"
            n = manifest_rows(admin, job_id)
            if 1 <= n <= N_SHARDS - 3:  # mid-job: at least two more shards still to commit
                # The server drops the job's connection, as a failover or an administrator would.
                killed = admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchall()
                terminated = sum(1 for (ok,) in killed if ok)
                assert terminated >= 1
            time.sleep(0.005)
        report = running.result(timeout=90)
        assert manifest_rows(admin, job_id) == N_SHARDS

    assert report["status"] == "succeeded", report
    assert report["retries"] >= 1
    assert report["shards_failed"] == 0 and report["shards_committed"] == N_SHARDS
    assert report["rows_written"] == N_ROWS
    check_table(postgres_dsn, "scores_transient", reference)


def test_postgres_shard_failing_in_its_transaction_leaves_nothing_and_retries_whole(
        postgres_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure after the upsert rolls back the shard's rows, its manifest row and the first
    shard's CREATE TABLE; the retry creates the table again. Committing a shard twice (a COMMIT
    whose acknowledgement was lost) does not duplicate rows; a closed connection is reopened."""
    from inferlane.store.tables.postgres import PostgresTable
    from inferlane.store.tables.sql import SqlShardSink

    sink = SqlShardSink(PostgresTable(postgres_dsn, "scores_rollback", ["id"]), "pg-rollback", "fp",
                        tmp_path / "rejects")
    at = datetime(2026, 11, 23, 4, 5, 6, tzinfo=UTC)
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "p": pa.array([0.5, 0.25, 1.0], pa.float32()),
                      "score": [0.1, 0.2, 0.3], "ok": [True, False, True], "name": ["a", "b", "c"],
                      "at": pa.array([at] * 3, pa.timestamp("us", tz="UTC"))})
    real = sink.db._bulk_upsert

    def upsert_then_fail(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        real(columns, rows)
        raise psycopg.OperationalError("injected: connection lost before COMMIT")

    monkeypatch.setattr(sink.db, "_bulk_upsert", upsert_then_fail)
    with pytest.raises(psycopg.OperationalError, match="injected"):
        sink.commit("s0", table, [])
    monkeypatch.undo()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('scores_rollback')").fetchone() == (None,)
        assert manifest_rows(conn, "pg-rollback") == 0
        assert sink.finished_shards() == {}

        sink.commit("s0", table, [])
        sink.commit("s0", table, [])
        sink.db._conn.close()  # type: ignore[attr-defined]
        sink.commit("s1", pa.table({"id": pa.array([4], pa.int64()), "p": pa.array([2.0], pa.float32()),
                                    "score": [0.4], "ok": [False], "name": ["d"],
                                    "at": pa.array([at], pa.timestamp("us", tz="UTC"))}), [])
        sink.close()
        rows = conn.execute("SELECT id, p, score, ok, name, at FROM scores_rollback ORDER BY id").fetchall()
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'scores_rollback'").fetchall())
        assert manifest_rows(conn, "pg-rollback") == 2
    assert rows == [(1, 0.5, 0.1, True, "a", at), (2, 0.25, 0.2, False, "b", at), (3, 1.0, 0.3, True, "c", at),
                    (4, 2.0, 0.4, False, "d", at)]
    assert types == {"id": "bigint", "p": "real", "score": "double precision", "ok": "boolean", "name": "text",
                     "at": "timestamp with time zone"}


def _as_from_a_shell() -> None:
    """In the child before exec: SIGINT handled and not blocked, as a shell starts a command. A test
    process may hand down an ignored or blocked SIGINT (a disposition and a mask survive exec), and
    Python then never raises KeyboardInterrupt: the job would run to its end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.e2e
def test_ctrl_c_says_how_far_the_job_got_and_a_rerun_resumes(slowed_repo: Path, big_input: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = cli(slowed_repo, big_input, str(out), "ctrl-c")
    log = tmp_path / "interrupted.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, preexec_fn=_as_from_a_shell)
    try:
        wait_until(lambda: manifest_lines(out) >= 1, "a shard is committed", timeout_s=60,
                   abort_if=[exited(proc, log)])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130, log.read_text()
    finally:
        proc.kill()
        proc.wait(30)
    done = manifest_lines(out)
    assert 1 <= done < N_SHARDS, f"{done} shards committed when Ctrl-C stopped the job"
    text = log.read_text()
    assert f"interrupted: {done} of {N_SHARDS} shards done ({done} this run" in text, text
    assert f"{done * SHARD_ROWS} rows read this run" in text
    assert "re-run the same command to resume" in text
    assert "Traceback" not in text

    report = resume(cmd, tmp_path)
    assert report["shards_skipped_already_done"] == done
    assert report["rows_read_earlier_runs"] == done * SHARD_ROWS
    assert report["rows_read_this_run"] == N_ROWS - done * SHARD_ROWS
    assert report["rows_written"] == N_ROWS


def test_postgres_restarted_during_a_job_is_retried_and_nothing_duplicates(model_repo: Path, big_input: Path,
                                                                            reference: pa.Table,
                                                                            tmp_path: Path) -> None:
    from inferlane.testing import postgres_server
    from inferlane.testing.services.postgres import _as_postgres, postgres_bindir

    with postgres_server() as dsn, psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute("SHOW data_directory").fetchone()
        assert row is not None
        spec = job(model_repo, big_input, dsn, "pg-restart", table="scores_restart", retries=6,
                   retry_backoff_s=0.2, rejects_dir=str(tmp_path / "rejects"))
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(run_batch, spec)
            wait_until(lambda: manifest_rows(admin, "pg-restart") >= 1, "a shard is committed", timeout_s=60,
                       abort_if=[lambda: f"the job ended: {running.result()}" if running.done() else None])
            assert manifest_rows(admin, "pg-restart") < N_SHARDS
            prefix, _, _ = _as_postgres()
            data = Path(row[0])
            # The server's output to its own log: a pipe of ours would be held open by the new server.
            restarted = subprocess.run([*prefix, str(postgres_bindir() / "pg_ctl"), "-D", str(data), "-l",
                                        str(data.parent / "server.log"), "-m", "fast", "-w", "restart"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       timeout=60)
            assert restarted.returncode == 0
            report = running.result(timeout=120)
        assert report["retries"] >= 1
        if report["status"] != "succeeded":  # retries ran out: the failure is reported and a re-run resumes
            assert report["shards_failed"] > 0 and report["failures"]
            report = run_batch(spec)
        assert report["status"] == "succeeded", report["failures"]
        assert report["rows_written"] == N_ROWS
        check_table(dsn, "scores_restart", reference)
