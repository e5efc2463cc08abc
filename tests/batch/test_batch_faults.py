"""Faults under a batch job: the file sink's disk fills up (a small tmpfs), and the PostgreSQL
server restarts mid-run. Either way the job says what went wrong, commits nothing half-written,
and a re-run finishes with exactly one row per input row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from inferlane.lanes.batch import run_batch
from inferlane.store.tables.files import read_manifest
from inferlane.testing import grow
from tests.batch.test_batch_lane import dataset, job
from tests.conftest import tmpfs

ROWS, SHARD = 20_000, 1_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "1m") as mounted:
        yield mounted


def test_disk_full_fails_clearly_commits_nothing_half_written_and_resumes(model_repo: Path, small_disk: Path,
                                                                          tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(dataset(ROWS), tmp_path / "in" / "x.parquet", row_group_size=SHARD)
    out = small_disk / "out"
    spec = job(model_repo, tmp_path / "in", out, job_id="full", shard_rows=SHARD, output_format="jsonl")

    full = run_batch(spec)
    assert full["status"] == "partial"
    assert full["shards_failed"] > 0 and full["shards_committed"] > 0
    assert all("No space left on device" in f for f in full["failures"]), full["failures"]
    assert not list(out.glob(".tmp-*"))  # a failed write gives its space back
    manifest = list(read_manifest(out).values())  # (a line torn by the full disk is no record)
    for rec in manifest:  # every shard the manifest holds is whole
        assert len((out / rec["file"]).read_bytes().splitlines()) == rec["rows"] == SHARD

    grow(small_disk, "16m")
    done = run_batch(spec)
    assert done["status"] == "succeeded", done["failures"]
    assert done["shards_skipped_already_done"] == len(manifest)
    assert done["rows_written"] == ROWS
    ids = [orjson.loads(line)["id"] for p in sorted(out.glob("part-*.jsonl")) for line in p.read_bytes().splitlines()]
    assert sorted(ids) == list(range(1000, 1000 + ROWS))
