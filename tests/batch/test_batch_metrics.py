"""A batch job is observable like every lane: its series carry model, version and lane="batch",
on ``--metrics-port`` while it runs and pushed to a Pushgateway when it ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferlane.core.metrics import Metrics
from inferlane.lanes.batch import BatchJob, run_batch
from inferlane.testing import exited, free_port, serve_or_fail, stop_process, wait_until
from inferlane.testing.services.pushgateway import pushgateway

SLOW = textwrap.dedent('''
    import time
    from pathlib import Path

    class Model:
        def load(self, version_dir):
            self.gate = Path(version_dir).parent / "go"

        def predict(self, batch):
            while not self.gate.exists():   # holds the job until the test has scraped it
                time.sleep(0.01)
            return {"score": batch["features"].sum(axis=1)}
''')


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


def inputs(folder: Path, rows: int = 1000, bad: int = 10) -> Path:
    folder.mkdir()
    cols = {"id": pa.array(range(rows), pa.int64())}
    for j in range(4):
        values: list[float | None] = [float(j)] * rows
        if j == 0:
            values[:bad] = [None] * bad
        cols[f"f{j}"] = pa.array(values, pa.float64())
    pq.write_table(pa.table(cols), folder / "x.parquet", row_group_size=250)
    return folder


def slow_model(root: Path) -> Path:
    d = root / "slow"
    (d / "1").mkdir(parents=True)
    (d / "1" / "model.py").write_text(SLOW)
    (d / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python", "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]}))
    return d


def test_a_run_counts_rows_shards_and_forward_passes_with_the_lane_labels(tmp_path: Path) -> None:
    model = slow_model(tmp_path)
    (model / "go").touch()
    metrics = Metrics()
    report = run_batch(BatchJob(model=str(model), input=str(inputs(tmp_path / "in")), output=str(tmp_path / "out"),
                                key=["id"], job_id="m", shard_rows=250, batch_size=100, progress=False,
                                max_reject_ratio=0.5), metrics=metrics)
    assert report["status"] == "succeeded"
    text = generate_latest(metrics.registry).decode()
    labels = {"model": "slow", "version": "1", "lane": "batch"}
    assert sample(text, "inferlane_batch_rows_total", outcome="read", **labels) == 1000
    assert sample(text, "inferlane_batch_rows_total", outcome="written", **labels) == 990
    assert sample(text, "inferlane_batch_rows_total", outcome="rejected", **labels) == 10
    assert sample(text, "inferlane_batch_shards_total", outcome="committed", **labels) == 4
    assert sample(text, "inferlane_batch_shards_planned", **labels) == 4
    # forward passes of at most --batch-size 100 rows: 240 + 3 × 250 valid rows in 4 shards
    assert sample(text, "inferlane_batch_size_count", **labels) == 12
    assert sample(text, "inferlane_batch_size_sum", **labels) == 990
    assert sample(text, "inferlane_forward_seconds_count", **labels) == 12
    for family in text_string_to_metric_families(text):  # every series of the lane has the three labels
        for s in family.samples:
            if s.name.startswith("inferlane_batch_rows") or s.name.startswith("inferlane_batch_shards"):
                assert {"model", "version", "lane"} <= set(s.labels), s


@pytest.mark.e2e
def test_metrics_port_serves_progress_while_the_job_runs(tmp_path: Path) -> None:
    model = slow_model(tmp_path)
    port = free_port()
    cmd = [sys.executable, "-m", "inferlane", "batch", "run", "--model", str(model), "--input",
           str(inputs(tmp_path / "in", bad=0)), "--output", str(tmp_path / "out"), "--key", "id", "--job-id", "p",
           "--shard-rows", "250", "--quiet", "--metrics-port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def planned() -> bool:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False
            return "inferlane_batch_shards_planned{" in text

        wait_until(planned, "the job's metrics endpoint answered", 60, abort_if=[exited(proc)])
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        labels = {"model": "slow", "version": "1", "lane": "batch"}
        assert sample(text, "inferlane_batch_shards_planned", **labels) == 4
        assert sample(text, "inferlane_batch_rows_total", outcome="written", **labels) == 0  # held by the model
        (model / "go").touch()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        stop_process(proc)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    yield from serve_or_fail(pushgateway(tmp_path))


def test_a_finished_job_pushes_its_metrics(gateway: str, tmp_path: Path) -> None:
    model = slow_model(tmp_path)
    (model / "go").touch()
    report = run_batch(BatchJob(model=str(model), input=str(inputs(tmp_path / "in")), output=str(tmp_path / "out"),
                                key=["id"], job_id="nightly-7", shard_rows=500, progress=False, max_reject_ratio=0.5,
                                pushgateway=gateway))
    assert report["rows_written"] == 990
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    assert sample(text, "inferlane_batch_rows_total", outcome="written", model="slow", lane="batch",
                  job="inferlane-batch", job_id="nightly-7") == 990


def test_an_unreachable_pushgateway_does_not_fail_the_job(tmp_path: Path) -> None:
    model = slow_model(tmp_path)
    (model / "go").touch()
    report = run_batch(BatchJob(model=str(model), input=str(inputs(tmp_path / "in")), output=str(tmp_path / "out"),
                                key=["id"], job_id="j", progress=False, max_reject_ratio=0.5,
                                pushgateway=f"http://127.0.0.1:{free_port()}"))
    assert report["status"] == "succeeded"
