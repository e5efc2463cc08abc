"""Batch lane: formats, rejects, retries, exit codes, schedule, and online/batch equality."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.demo.models import synthetic_transactions
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.lanes.batch.schedule import estimate, parse_deadline
from tests.conftest import Server

N = 3000
FEATURES = [f"f{i}" for i in range(30)]


def dataset(n: int = N, seed: int = 1) -> pa.Table:
    x, _ = synthetic_transactions(n, seed=seed)
    cols: dict[str, object] = {"id": np.arange(1000, 1000 + n, dtype=np.int64)}
    cols.update({f: x[:, i] for i, f in enumerate(FEATURES)})
    return pa.table(cols)


def write_inputs(table: pa.Table, root: Path) -> dict[str, Path]:
    paths = {}
    for fmt in ("parquet", "csv", "jsonl"):
        d = root / fmt
        d.mkdir()
        if fmt == "parquet":
            pq.write_table(table, d / "part-a.parquet", row_group_size=500)
        elif fmt == "csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, d / "a.csv")
        else:
            (d / "a.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table.to_pylist()))
        paths[fmt] = d
    return paths


def model_outputs(model_dir: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    entry = scan_model(model_dir)
    return ModelVersion.load(entry.config, entry.path, "1").forward({"features": x})


def job(model_repo: Path, inp: Path | str, out: Path | str, **kw: object) -> BatchJob:
    args: dict[str, object] = {"model": str(model_repo / "fraud"), "input": str(inp), "output": str(out),
                               "key": ["id"], "job_id": "test", "shard_rows": 700, "progress": False}
    args.update(kw)
    return BatchJob(**args)  # type: ignore[arg-type]


def sorted_rows(path: Path) -> pa.Table:
    return pq.read_table(path).drop_columns(["scored_at"]).sort_by("id")


def test_every_input_format_gives_the_same_rows(model_repo: Path, tmp_path: Path) -> None:
    table = dataset()
    paths = write_inputs(table, tmp_path)
    results = {}
    for fmt, inp in paths.items():
        report = run_batch(job(model_repo, inp, tmp_path / f"out-{fmt}"))
        assert report["status"] == "succeeded"
        assert report["rows_read"] == report["rows_written"] == N
        assert report["shards_total"] == (3 if fmt == "parquet" else 5)  # Parquet follows row groups
        results[fmt] = sorted_rows(tmp_path / f"out-{fmt}")
    assert results["parquet"].equals(results["csv"])
    assert results["parquet"].equals(results["jsonl"])
    x = np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
    want = model_outputs(model_repo / "fraud", x)
    got = results["parquet"]
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    probs = np.asarray(got.column("probabilities").combine_chunks().flatten()).reshape(-1, 2)
    assert np.array_equal(probs, want["probabilities"])
    assert set(got.column("model_version").to_pylist()) == {"1"}


def test_rejects_go_to_a_file_with_reason_and_key(model_repo: Path, tmp_path: Path) -> None:
    rows = dataset(200).to_pylist()
    rows[3]["f2"] = None
    rows[5]["f7"] = "not-a-number"
    del rows[9]["f1"]
    lines = [orjson.dumps(r) for r in rows] + [b"{broken json"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = run_batch(job(model_repo, tmp_path / "in", tmp_path / "out", max_reject_ratio=0.05))
    assert report["status"] == "succeeded"
    assert report["rows_rejected"] == 4
    assert report["rows_written"] == 197
    rejects = [json.loads(line) for p in sorted((tmp_path / "out" / "_rejects").glob("*.jsonl"))
               for line in p.read_text().splitlines()]
    by_key = {r["key"]: r["reason"] for r in rejects}
    # The input contract's reasons, word for word the same as the online and stream lanes give.
    assert by_key["1003"] == "input 'features' (field f2): null where FP32 numbers belong"
    assert by_key["1005"] == "input 'features' (field f7): a string where FP32 numbers belong"
    assert by_key["1009"] == "input 'features': missing field 'f1'"
    assert any(r["key"] is None and r["reason"].startswith("not JSON: ") and r["row"] == 200 for r in rejects)
    written = pq.read_table(tmp_path / "out").column("id").to_pylist()
    assert 1003 not in written and 1004 in written


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferlane", "batch", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.e2e
def test_exit_codes_success_partial_and_bad_usage(model_repo: Path, tmp_path: Path) -> None:
    t = dataset(100)
    bad = t.set_column(2, "f1", pa.array([None] * 10 + [0.5] * 90, pa.float32()))
    (tmp_path / "in").mkdir()
    pq.write_table(bad, tmp_path / "in" / "x.parquet")
    common = ["run", "--model", str(model_repo / "fraud"), "--input", str(tmp_path / "in"), "--key", "id",
              "--quiet", "--json"]
    ok = run_cli(*common, "--output", str(tmp_path / "o1"), "--job-id", "a", "--max-reject-ratio", "0.2")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["rows_rejected"] == 10
    partial = run_cli(*common, "--output", str(tmp_path / "o2"), "--job-id", "b", "--max-reject-ratio", "0.05")
    assert partial.returncode == 3
    assert json.loads(partial.stdout.splitlines()[-1])["status"] == "partial"
    usage = run_cli(*common, "--output", str(tmp_path / "o3"), "--job-id", "c", "--columns", "nope=f1")
    assert usage.returncode == 2
    assert "the model has no input 'nope'" in usage.stderr
    missing_key = run_cli(*[a if a != "id" else "ident" for a in common], "--output", str(tmp_path / "o4"),
                          "--job-id", "d")
    assert missing_key.returncode == 2
    assert "the input has no column 'ident'" in missing_key.stderr
    other_job = run_cli(*common, "--output", str(tmp_path / "o1"), "--job-id", "zzz")
    assert other_job.returncode == 2
    assert "holds the output of job 'a'" in other_job.stderr


@pytest.mark.e2e
def test_corrupt_input_is_a_clear_error(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.parquet").write_bytes(b"PAR1 this is not parquet at all")
    r = run_cli("run", "--model", str(model_repo / "fraud"), "--input", str(tmp_path / "in"), "--key", "id",
                "--output", str(tmp_path / "o"), "--job-id", "j", "--quiet")
    assert r.returncode == 2
    assert "not a readable Parquet file" in r.stderr


FLAKY = textwrap.dedent('''
    import threading
    from pathlib import Path

    class Model:
        def load(self, version_dir):
            self.fail_first = int((Path(version_dir) / "fail_first").read_text())
            self.calls = 0
            self.lock = threading.Lock()  # the batch lane scores two shards at once

        def predict(self, batch):
            with self.lock:
                n = self.calls
                self.calls += 1
            if n < self.fail_first:
                raise ConnectionError(f"feature service unreachable (call {n})")
            return {"score": batch["features"].sum(axis=1)}
''')


def flaky_model(root: Path, fail_first: int) -> Path:
    d = root / "flaky"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(FLAKY)
    (d / "1" / "fail_first").write_text(str(fail_first))
    (d / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]}))
    return d


def test_transient_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(dataset(1000), tmp_path / "in" / "x.parquet", row_group_size=500)
    d = flaky_model(tmp_path, fail_first=2)
    report = run_batch(BatchJob(model=str(d), input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                key=["id"], job_id="r", shard_rows=500, retry_backoff_s=0.01, progress=False))
    assert report["status"] == "succeeded"
    assert report["retries"] == 2
    assert report["rows_written"] == 1000


@pytest.mark.e2e
def test_a_shard_that_keeps_failing_fails_the_job_naming_the_shard(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(dataset(1000), tmp_path / "in" / "x.parquet", row_group_size=500)
    d = flaky_model(tmp_path, fail_first=1000)
    r = run_cli("run", "--model", str(d), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--key", "id", "--job-id", "f", "--shard-rows", "500", "--retries", "1", "--quiet")
    assert r.returncode == 3
    assert "shard 00000-000000000000" in r.stderr
    assert "failed 2 times; last error: ConnectionError: feature service unreachable" in r.stderr


def test_sqlite_sink_upserts_and_resumes(model_repo: Path, tmp_path: Path) -> None:
    import sqlite3

    (tmp_path / "in").mkdir()
    pq.write_table(dataset(1500), tmp_path / "in" / "x.parquet", row_group_size=500)
    db = tmp_path / "scores.db"
    out = f"sqlite:///{db}"
    first = run_batch(job(model_repo, tmp_path / "in", out, shard_rows=500, table="scores"))
    again = run_batch(job(model_repo, tmp_path / "in", out, shard_rows=500, table="scores"))
    assert first["rows_written"] == 1500
    assert again["shards_skipped_already_done"] == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM scores").fetchone() == (1500, 1500)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(scores)")]
    assert cols[:4] == ["id", "label", "probabilities_0", "probabilities_1"]


@pytest.mark.e2e
def test_batch_and_online_give_identical_outputs(model_repo: Path, server: Server, tmp_path: Path) -> None:
    table = dataset(64, seed=9)
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "x.parquet")
    run_batch(job(model_repo, tmp_path / "in", tmp_path / "out"))
    batch = sorted_rows(tmp_path / "out")
    x = np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
    for i in range(0, 64, 8):  # online requests of 8 rows
        body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [8, 30],
                            "data": x[i:i + 8].ravel().tolist()}]}
        r = httpx.post(f"{server.url}/v2/models/fraud/infer", content=orjson.dumps(body))
        assert r.status_code == 200
        outs = {o["name"]: o for o in r.json()["outputs"]}
        online = np.asarray(outs["probabilities"]["data"], np.float32).reshape(8, 2)
        offline = np.asarray(batch.column("probabilities").combine_chunks().flatten()).reshape(-1, 2)[i:i + 8]
        assert np.array_equal(online, offline)
        assert outs["label"]["data"] == batch.column("label").to_pylist()[i:i + 8]


def test_deadline_estimate() -> None:
    start = datetime(2026, 11, 24, 2, 0).astimezone()
    history = [{"status": "succeeded", "rows_per_s": 1000.0, "duration_s": 12.0, "rows_read": 10_000}] * 3
    deadline = parse_deadline("08:00", start)
    assert deadline is not None and deadline.hour == 8 and deadline.date() == start.date()
    ok = estimate(10_000_000, history, start, deadline)  # 10,000 s + 2 s overhead: 04:46
    assert not ok.at_risk
    assert ok.finish == start + timedelta(seconds=10_002)
    late = estimate(30_000_000, history, start, deadline)  # 30,000 s: 10:20
    assert late.at_risk
    assert "MISSED BY" in late.describe()
    assert estimate(5, [], start, deadline).finish is None
    assert parse_deadline("01:00", start) == start.replace(hour=1) + timedelta(days=1)


@pytest.mark.e2e
def test_schedule_warns_at_the_start_when_the_deadline_is_at_risk(model_repo: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(dataset(500), tmp_path / "in" / "x.parquet")
    history = tmp_path / "history.jsonl"
    slow = {"status": "succeeded", "rows_per_s": 0.01, "duration_s": 5.0, "rows_read": 0}
    history.write_text(json.dumps(slow) + "\n")
    soon = (datetime.now() + timedelta(minutes=2)).strftime("%H:%M")
    r = run_cli("schedule", "--model", str(model_repo / "fraud"), "--input", str(tmp_path / "in"),
                "--output", str(tmp_path / "out-{date}"), "--key", "id", "--cron", "0 2 * * *",
                "--deadline", soon, "--run-now", "--max-runs", "1", "--history", str(history),
                "--name", "nightly", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "DEADLINE AT RISK for job nightly-" in r.stderr
    assert "500 rows at 0 rows/s" in r.stderr
    day = datetime.now().strftime("%Y-%m-%d")
    assert (tmp_path / f"out-{day}" / "_inferlane" / "report.json").exists()
    lines = history.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["rows_written"] == 500


def test_csv_shard_plan_counts_rows_exactly(tmp_path: Path) -> None:
    from inferlane.core.uri import filesystem_for
    from inferlane.lanes.batch.sources import list_inputs, plan_shards

    (tmp_path / "a.csv").write_text("id,x\n" + "".join(f"{i},1\n" for i in range(1500)))
    (tmp_path / "b.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in range(10)) + '{"id": 10}')
    fs, path = filesystem_for(str(tmp_path))
    shards = plan_shards(fs, list_inputs(str(tmp_path), fs, path), 1000)
    assert [(s.start, s.stop) for s in shards] == [(0, 1000), (1000, 1500), (0, 11)]
