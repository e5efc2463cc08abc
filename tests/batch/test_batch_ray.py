"""The Ray engine: same rows and manifest as the local engine, resumes, reports failed shards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferlane.core.errors import ConfigError
from inferlane.demo.models import synthetic_transactions
from inferlane.lanes.batch import BatchJob, run_batch

ray = pytest.importorskip("ray")

pytestmark = [
    # Ray Data's DataContext sets its own deprecated fields when it is created.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context"),
]

N = 20_000


def write_input(folder: Path, n: int = N) -> None:
    """Two Parquet files of 10k rows, row groups of 2500: 8 shards at shard_rows=2500."""
    x, _ = synthetic_transactions(n, seed=3)
    folder.mkdir()
    half = n // 2
    for i, lo in enumerate((0, half)):
        cols: dict[str, object] = {"id": np.arange(lo, lo + half, dtype=np.int64)}
        cols.update({f"f{j}": x[lo:lo + half, j] for j in range(30)})
        pq.write_table(pa.table(cols), folder / f"part-{i}.parquet", row_group_size=2500)


def job(model_repo: Path, inp: Path, out: Path, **kw: object) -> BatchJob:
    args: dict[str, object] = {"model": str(model_repo / "fraud"), "input": str(inp), "output": str(out),
                               "key": ["id"], "job_id": "ray-test", "shard_rows": 2500, "progress": False,
                               "ray_actors": 2}
    args.update(kw)
    return BatchJob(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def ray_session() -> Iterator[None]:
    """One Ray instance for the module (start-up costs seconds); run_ray joins it."""
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def rows(out: Path) -> pa.Table:
    return pq.read_table(out).drop_columns(["scored_at"]).sort_by("id")


def test_ray_engine_matches_the_local_engine_and_resumes(model_repo: Path, tmp_path: Path) -> None:
    write_input(tmp_path / "in")
    local = run_batch(job(model_repo, tmp_path / "in", tmp_path / "local"))
    first = run_batch(job(model_repo, tmp_path / "in", tmp_path / "ray", engine="ray"))
    for key in ("status", "rows_read", "rows_written", "rows_rejected", "shards_total", "shards_committed"):
        assert first[key] == local[key], key
    assert first["status"] == "succeeded" and first["engine"] == "ray"
    assert first["rows_written"] == N and first["shards_total"] == 8 and first["shards_failed"] == 0
    expected, got = rows(tmp_path / "local"), rows(tmp_path / "ray")
    assert got.schema == expected.schema
    assert got.equals(expected)
    parts = sorted(p.name for p in (tmp_path / "ray").glob("part-*.parquet"))
    assert parts == sorted(p.name for p in (tmp_path / "local").glob("part-*.parquet")) and len(parts) == 8
    manifest = (tmp_path / "ray" / "_inferlane" / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 8

    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("part-*.parquet")}
    again = run_batch(job(model_repo, tmp_path / "in", tmp_path / "ray", engine="ray"))
    assert again["status"] == "succeeded"
    assert again["shards_skipped_already_done"] == 8 and again["shards_committed"] == 0
    assert again["rows_written"] == N  # counted from the manifest
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing rewritten
    assert len((tmp_path / "ray" / "_inferlane" / "manifest.jsonl").read_text().splitlines()) == 8


def test_a_shard_that_keeps_failing_is_reported_not_fatal(model_repo: Path, tmp_path: Path) -> None:
    write_input(tmp_path / "in", n=10_000)
    bad = tmp_path / "in" / "part-1.parquet"
    data = bytearray(bad.read_bytes())
    offset = pq.ParquetFile(bad).metadata.row_group(1).column(5).data_page_offset
    data[offset:offset + 64] = b"\xff" * 64  # row group 1 = rows 2500-5000: an unreadable page header
    bad.write_bytes(bytes(data))
    os.utime(bad)
    report = run_batch(job(model_repo, tmp_path / "in", tmp_path / "out", engine="ray",
                           retries=1, retry_backoff_s=0.01))
    assert report["status"] == "partial"
    assert report["shards_total"] == 4 and report["shards_failed"] == 1 and report["shards_committed"] == 3
    # Corrupt data is not transient (core/retry.py): the shard fails at once, without a retry.
    assert report["retries"] == 0
    assert "part-1.parquet" in report["failures"][0] and "OSError" in report["failures"][0]
    assert report["rows_written"] == 7500 and rows(tmp_path / "out").num_rows == 7500


def test_bad_usage_stops_the_job_as_with_the_local_engine(model_repo: Path, tmp_path: Path) -> None:
    write_input(tmp_path / "in", n=2000)
    with pytest.raises(ConfigError, match="--key account"):  # found by the actors, raised by the driver
        run_batch(job(model_repo, tmp_path / "in", tmp_path / "out", engine="ray", key=["account"]))
    assert not list((tmp_path / "out").glob("part-*"))
