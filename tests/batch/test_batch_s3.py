"""The object-store path against a real S3-compatible server (moto's server mode) on loopback."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from inferlane.core.errors import ConfigError
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.core.uri import filesystem_for
from inferlane.demo.models import synthetic_transactions
from inferlane.lanes.batch import BatchJob, run_batch
from tests.batch.conftest import BUCKET, S3

N_PARQUET, N_CSV = 6000, 1500


def features(n: int, first_id: int, seed: int) -> pa.Table:
    x, _ = synthetic_transactions(n, seed=seed)
    cols: dict[str, object] = {"id": np.arange(first_id, first_id + n, dtype=np.int64)}
    cols.update({f"f{j}": x[:, j] for j in range(30)})
    return pa.table(cols)


def put(s3: S3, key: str, table: pa.Table, fmt: str) -> None:
    buf = io.BytesIO()
    if fmt == "parquet":
        pq.write_table(table, buf, row_group_size=1000)
    else:
        pacsv.write_csv(table, buf)
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=buf.getvalue())


def test_s3_input_is_scored_like_the_model_forward(s3: S3, model_repo: Path, tmp_path: Path) -> None:
    tables = [features(N_PARQUET // 2, 0, 11), features(N_PARQUET // 2, 10_000, 12), features(N_CSV, 20_000, 13)]
    put(s3, "batch/day=1/a.parquet", tables[0], "parquet")
    put(s3, "batch/day=1/b.parquet", tables[1], "parquet")
    put(s3, "batch/day=2/c.csv", tables[2], "csv")
    s3.client.put_object(Bucket=BUCKET, Key="batch/_SUCCESS", Body=b"")  # markers are not inputs
    report = run_batch(BatchJob(model=str(model_repo / "fraud"), input=f"s3://{BUCKET}/batch/",
                                output=str(tmp_path / "out"), key=["id"], job_id="s3", shard_rows=1000,
                                endpoint_url=s3.endpoint, progress=False))
    total = N_PARQUET + N_CSV
    assert report["status"] == "succeeded", report["failures"]
    assert report["rows_read"] == report["rows_written"] == total and report["rows_rejected"] == 0
    assert report["shards_total"] == 6 + 2  # Parquet: one per 1000-row group; CSV: 1500 rows / 1000

    out = pq.read_table(tmp_path / "out").sort_by("id")
    expected_input = pa.concat_tables(tables).sort_by("id")
    assert out.column("id").to_pylist() == expected_input.column("id").to_pylist()  # every row, once
    entry = scan_model(model_repo / "fraud")
    model = ModelVersion.load(entry.config, entry.path, "1")
    x = np.column_stack([expected_input.column(f"f{j}").to_numpy() for j in range(30)]).astype(np.float32)
    want = model.forward({"features": x})
    np.testing.assert_array_equal(out.column("label").to_numpy(), want["label"])
    got_p = np.asarray(out.column("probabilities").combine_chunks().flatten()).reshape(-1, 2)
    np.testing.assert_allclose(got_p, want["probabilities"], rtol=1e-5, atol=1e-6)
    assert set(out.column("model_name").to_pylist()) == {"fraud"}

    again = run_batch(BatchJob(model=str(model_repo / "fraud"), input=f"s3://{BUCKET}/batch/",
                               output=str(tmp_path / "out"), key=["id"], job_id="s3", shard_rows=1000,
                               endpoint_url=s3.endpoint, progress=False))
    assert again["shards_skipped_already_done"] == 8 and again["shards_committed"] == 0


def test_missing_s3_prefix_is_a_usage_error(s3: S3, model_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="input not found"):
        run_batch(BatchJob(model=str(model_repo / "fraud"), input=f"s3://{BUCKET}/nothing-here/",
                           output=str(tmp_path / "out"), key=["id"], job_id="s3", endpoint_url=s3.endpoint,
                           progress=False))


@pytest.mark.parametrize(("endpoint", "override", "scheme"), [
    ("http://127.0.0.1:9000", "127.0.0.1:9000", "http"),
    ("https://minio.internal:9000/", "minio.internal:9000", "https"),
    ("localhost:9000", "localhost:9000", "https"),  # urlparse alone reads "localhost" as a scheme
])
def test_endpoint_url_forms(endpoint: str, override: str, scheme: str, s3: S3) -> None:
    fs, path = filesystem_for("s3://bucket/some/prefix/", endpoint)
    assert path == "bucket/some/prefix/"
    options = fs.__reduce__()[1][0]  # the constructor's arguments, as pickling rebuilds it
    assert (options["endpoint_override"], options["scheme"]) == (override, scheme)


def test_bad_endpoint_url_is_a_usage_error() -> None:
    with pytest.raises(ConfigError, match="endpoint-url"):
        filesystem_for("s3://bucket/key", "ftp://host:21")
