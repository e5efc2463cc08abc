"""The batch lane into a key-value store (``--output store://NAME`` or ``redis://...?prefix=NAME``, the
hybrid lane's precompute): per key the values equal the Parquet output's row bit for bit, a job
killed mid-run resumes to the same values, --ttl, --dry-run, --overwrite, and keys a store cannot
hold go to the rejects."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from inferlane.cli.main import main
from inferlane.core.errors import ConfigError
from inferlane.lanes.batch import BatchJob, dry_run, run_batch
from inferlane.store.kv import decode, open_kv
from tests.batch import test_batch_resume as resume_tests
from tests.batch.test_batch_lane import dataset
from tests.batch.test_batch_resume import N_ROWS, N_SHARDS, check_resume_report, cli, job, kill_mid_run, resume

big_input = resume_tests.big_input  # the fixtures: 120k rows in 12 shards, and their uninterrupted Parquet output
reference = resume_tests.reference

FAST = {"batch_size": 4096, "threads": 0}


def store_db() -> Path:
    return Path(os.environ["INFERLANE_STATE_DIR"]) / "store.db"


@pytest.fixture(params=["sqlite", "redis"])
def kv_url(request: pytest.FixtureRequest) -> str:
    """A new namespace in the embedded store, or a new prefix on the session's Redis."""
    name = f"b{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        return f"store://{name}"
    return f"{request.getfixturevalue('redis_url')}?prefix={name}"


def assert_values_equal_reference(url: str, reference: pa.Table, since: float, until: float) -> None:
    """Every id's value decodes to the reference Parquet row, bit for bit."""
    store = open_kv(url)
    try:
        ids = reference["id"].to_pylist()
        raw = store.get_many([str(i) for i in ids])
    finally:
        store.close()
    assert None not in raw
    got = [decode(v) for v in raw if v is not None]
    assert {(g.model, g.version) for g in got} == {("fraud", "1")}
    assert all(int(since) <= g.computed_at <= until for g in got)  # scored_at: whole seconds
    labels = np.array([g.arrays["label"] for g in got])
    probs = np.array([g.arrays["probabilities"] for g in got])
    assert labels.dtype == np.int64 and probs.dtype == np.float32 and probs.shape == (len(ids), 2)
    np.testing.assert_array_equal(labels, reference["label"].to_numpy())
    want = np.stack([reference["probabilities_0"].to_numpy(), reference["probabilities_1"].to_numpy()], axis=1)
    assert probs.tobytes() == want.astype(np.float32).tobytes()


def test_values_equal_the_parquet_rows_bit_for_bit(model_repo: Path, big_input: Path, reference: pa.Table,
                                                   kv_url: str) -> None:
    since = time.time()
    report = run_batch(job(model_repo, big_input, kv_url, "kv-equal", **FAST))
    assert report["status"] == "succeeded", report
    assert report["rows_written"] == N_ROWS and report["shards_done"] == N_SHARDS
    assert report["output"].startswith("store://" if kv_url.startswith("store") else "Redis")
    report_path = Path(report["report_path"])
    assert report_path == Path(os.environ["INFERLANE_STATE_DIR"]) / "batch" / "kv-equal-report.json"
    assert json.loads(report_path.read_text())["rows_written"] == N_ROWS
    assert_values_equal_reference(kv_url, reference, since, time.time())

    # The same job again: every shard is done, nothing is scored or written.
    again = run_batch(job(model_repo, big_input, kv_url, "kv-equal", **FAST))
    assert again["shards_skipped_already_done"] == N_SHARDS and again["rows_written_this_run"] == 0


def committed_shards(url: str, job_id: str) -> Callable[[], int]:
    """How many shards the job has recorded as finished in the store (read from outside the job)."""
    if url.startswith("store://"):
        ns = url[len("store://"):]

        def count() -> int:
            if not store_db().exists():
                return 0
            conn = sqlite3.connect(store_db())
            try:
                return int(conn.execute("SELECT count(*) FROM kv_batch_shards WHERE ns = ? AND job_id = ?",
                                        (ns, job_id)).fetchone()[0])
            except sqlite3.OperationalError:  # not created yet
                return 0
            finally:
                conn.close()
        return count
    client = redis.Redis.from_url(url.split("?")[0])
    prefix = url.split("prefix=")[1]
    return lambda: int(client.hlen(f"{prefix}#batch:{job_id}"))


@pytest.mark.e2e
def test_job_killed_mid_run_resumes_to_the_same_values(model_repo: Path, big_input: Path, reference: pa.Table,
                                                       redis_url: str, tmp_path: Path) -> None:
    """Redis: the manifest is written after the values (the embedded store commits both at once)."""
    url = f"{redis_url}?prefix=kill{uuid.uuid4().hex[:8]}"
    since = time.time()
    cmd = cli(model_repo, big_input, url, "kv-resume")
    killed_at = kill_mid_run(cmd, committed_shards(url, "kv-resume"), tmp_path / "killed.log")
    report = resume(cmd, tmp_path)
    check_resume_report(report, killed_at)
    assert committed_shards(url, "kv-resume")() == N_SHARDS
    assert_values_equal_reference(url, reference, since, time.time())


FLAKY_MODEL = """
import numpy as np

class Model:
    def load(self, version_dir):
        self.fail = version_dir / "fail"

    def predict(self, batch):
        x = batch["x"]
        if self.fail.exists() and (x[:, 0] == 13).any():
            raise RuntimeError("injected failure")
        return {"y": x.reshape(-1, 2, 2) * 2, "n": x[:, 0].astype(np.int64), "big": x[:, 1] > 0}
"""


@pytest.fixture(scope="module")
def flaky_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python model that fails on the row with x0 == 13 while ``1/fail`` exists; outputs of three
    datatypes, one with a row shape of two dimensions."""
    d = tmp_path_factory.mktemp("flaky") / "flaky"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(FLAKY_MODEL)
    (d / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2, 2]},
                    {"name": "n", "datatype": "INT64", "shape": [-1]},
                    {"name": "big", "datatype": "BOOL", "shape": [-1]}],
    }))
    return d


def test_resume_after_a_failed_shard_skips_the_finished_ones(flaky_model: Path, tmp_path: Path, kv_url: str) -> None:
    x = np.random.default_rng(5).standard_normal((1000, 4)).astype(np.float32)
    x[:, 0] = np.arange(1000)
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": np.arange(1000), **{f"x{i}": x[:, i] for i in range(4)}}),
                   tmp_path / "in" / "x.parquet", row_group_size=250)
    (flaky_model / "1" / "fail").touch()
    args: dict[str, Any] = {"model": str(flaky_model), "input": str(tmp_path / "in"), "output": kv_url,
                            "key": ["id"], "job_id": "kv-flaky", "shard_rows": 250, "progress": False,
                            "retries": 0}
    try:
        first = run_batch(BatchJob(**args))
    finally:
        (flaky_model / "1" / "fail").unlink()
    assert first["status"] == "partial" and first["shards_failed"] == 1 and first["shards_committed"] == 3, first
    store = open_kv(kv_url)
    try:
        assert store.get_many(["13", "500"])[0] is None  # the failed shard wrote nothing
        second = run_batch(BatchJob(**args))
        assert second["status"] == "succeeded", second
        assert second["shards_skipped_already_done"] == 3 and second["shards_committed"] == 1
        assert second["rows_written"] == 1000 and second["rows_written_this_run"] == 250
        got = [decode(v) for v in store.get_many([str(i) for i in range(1000)]) if v is not None]
    finally:
        store.close()
    assert len(got) == 1000
    for i, g in enumerate(got):
        assert g.model == "flaky" and g.arrays["y"].shape == (2, 2) and g.arrays["y"].dtype == np.float32
        assert g.arrays["y"].tobytes() == (x[i].reshape(2, 2) * 2).tobytes()
        assert g.arrays["n"].dtype == np.int64 and int(g.arrays["n"]) == i
        assert g.arrays["big"].dtype == np.bool_ and bool(g.arrays["big"]) == bool(x[i, 1] > 0)


def small_input(tmp_path: Path, ids: list[Any] | None = None) -> Path:
    """900 rows of the fraud model's features in 3 row groups (3 shards of 300); ids 1000..1899 unless given."""
    table = dataset(900)
    if ids is not None:
        table = table.set_column(0, "id", pa.array(ids))
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    pq.write_table(table, d / "x.parquet", row_group_size=300)
    return d


def cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """``inferlane batch run ...`` in this process: (exit code, the JSON report, stderr)."""
    code = main(["batch", "run", *args])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}, err


def test_ttl_dry_run_and_overwrite_through_the_cli(model_repo: Path, tmp_path: Path, kv_url: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    inp = small_input(tmp_path)
    common = ["--model", str(model_repo / "fraud"), "--input", str(inp), "--key", "id", "--quiet", "--json",
              "--shard-rows", "300", "--output", kv_url, "--job-id", "kv-cli"]
    code, plan, err = cli_run(capsys, *common, "--dry-run")
    assert code == 0, err
    assert plan["shards_to_run"] == 3 and plan["shards_already_done"] == 0
    store = open_kv(kv_url)
    try:
        assert store.get_many(["1000"]) == [None]  # a dry run writes nothing

        code, _, err = cli_run(capsys, *common, "--ttl", "24h")
        assert code == 0, err
        assert None not in store.get_many(["1000", "1899"])
        if kv_url.startswith("store://"):
            with contextlib.closing(sqlite3.connect(store_db())) as conn:
                expires = conn.execute("SELECT min(expires_at), max(expires_at) FROM kv WHERE ns = ?",
                                       (kv_url[len("store://"):],)).fetchone()
            assert time.time() + 86_000 < expires[0] <= expires[1] <= time.time() + 86_400
        else:
            client = redis.Redis.from_url(kv_url.split("?")[0])
            assert 86_000_000 < client.pttl(f"{kv_url.split('prefix=')[1]}:1000") <= 86_400_000
            client.close()

        code, plan, _ = cli_run(capsys, *common, "--dry-run")
        assert plan["shards_already_done"] == 3

        # Other inputs under the same job id: refused, unless --overwrite starts the job again.
        code, _, err = cli_run(capsys, *common, "--limit", "600")
        assert code == 2 and "--overwrite" in err, err
        code, report, err = cli_run(capsys, *common, "--limit", "600", "--overwrite")
        assert code == 0, err
        assert report["shards_committed"] == 2 and report["shards_skipped_already_done"] == 0
    finally:
        store.close()


def test_usage_errors(model_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = small_input(tmp_path)
    common = ["--model", str(model_repo / "fraud"), "--input", str(inp), "--key", "id", "--quiet", "--job-id", "u"]
    code, _, err = cli_run(capsys, *common, "--output", "store://x", "--table", "t")
    assert code == 2 and "--table applies to database outputs" in err
    code, _, err = cli_run(capsys, *common, "--output", str(tmp_path / "out"), "--ttl", "1h")
    assert code == 2 and "--ttl applies to a key-value store output" in err
    for bad in ["0s", "soon"]:
        with pytest.raises(SystemExit) as exit_info:
            cli_run(capsys, *common, "--output", "store://x", "--ttl", bad)
        assert exit_info.value.code == 2 and "duration" in capsys.readouterr().err
    for url in ["store://no/path", "redis://127.0.0.1:1/0/stream?prefix=p"]:
        with pytest.raises(ConfigError, match="--output"):
            dry_run(job(model_repo, inp, url, "x"))


def test_keys_a_store_cannot_hold_are_rejects(model_repo: Path, tmp_path: Path) -> None:
    ids = [f"user-{i}" for i in range(900)]
    ids[5], ids[400] = "", "k" * 1025
    inp = small_input(tmp_path, ids)
    url = f"store://rej{uuid.uuid4().hex[:8]}"
    report = run_batch(job(model_repo, inp, url, "kv-rejects", shard_rows=300, max_reject_ratio=0.5, **FAST))
    assert report["rows_rejected"] == 2, report
    rejects = [orjson.loads(line) for p in sorted((Path(report["report_path"]).parent / "kv-rejects-rejects").glob("*"))
               for line in p.read_bytes().splitlines()]
    assert sorted(r["reason"] for r in rejects) == ["key: a key is 1 to 1024 UTF-8 bytes, not 0",
                                                    "key: a key is 1 to 1024 UTF-8 bytes, not 1025"]
    store = open_kv(url)
    try:
        got = store.get_many([ids[4], ids[6], ids[899]])
    finally:
        store.close()
    assert None not in got


def test_several_key_columns_are_joined(model_repo: Path, tmp_path: Path) -> None:
    table = dataset(300).append_column("region", pa.array(["eu", "us", "ap"] * 100))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "x.parquet")
    url = f"store://multi{uuid.uuid4().hex[:8]}"
    report = run_batch(job(model_repo, tmp_path / "in", url, "kv-multi", key=["id", "region"],
                           columns={"features": [f"f{i}" for i in range(30)]}, **FAST))
    assert report["status"] == "succeeded", report
    store = open_kv(url)
    try:
        assert None not in store.get_many(["1000|eu", "1001|us", "1299|ap"])
        assert store.get_many(["1000"]) == [None]
    finally:
        store.close()
