"""What the batch benchmark measures, per model:

  raw    ONNX Runtime rows/s on the data already in memory as one array, at the same batch size,
         one session using every core (the limit no pipeline can beat)
  local  ``run_batch(engine="local")``: Parquet in, Parquet out, end to end (planning, reading,
         validation, scoring, writing, fsync, manifest)
  ray    the same job with ``engine="ray"`` (Ray Data actor pool; Ray start-up excluded)
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from inferlane.demo.models import N_FEATURES

MODELS = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
TARGETS = {"small": 0.9, "heavy": 0.95}
"""local rows/s over raw rows/s."""


def make_input(path: Path, rows: int) -> None:
    """``rows`` rows (an ``id`` and 30 float features) as Parquet files of up to 500,000 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    per_file = 500_000
    for i, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        cols: dict[str, object] = {"id": np.arange(start, start + n, dtype=np.int64)}
        x = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
        cols.update({f"f{j}": x[:, j] for j in range(N_FEATURES)})
        pq.write_table(pa.table(cols), path / f"part-{i:03d}.parquet", row_group_size=131_072)


def load_features(path: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    data = pq.read_table(path).drop_columns(["id"])
    return np.column_stack([c.to_numpy() for c in data.columns]).astype(np.float32)


def raw_limit(model_dir: Path, data: np.ndarray, batch: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": data[:batch]})
    t0 = time.perf_counter()
    for lo in range(0, len(data), batch):
        sess.run(None, {"x": data[lo:lo + batch]})
    return len(data) / (time.perf_counter() - t0)


def run_job(model_dir: Path, inp: Path, out: Path, engine: str, batch: int, rows: int) -> float:
    """Rows/s of one whole job; raises when it did not write every row."""
    from inferlane.lanes.batch import BatchJob, run_batch

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = run_batch(BatchJob(model=str(model_dir), input=str(inp), output=str(out), key=["id"],
                                job_id=f"bench-{engine}", engine=engine,  # type: ignore[arg-type]
                                batch_size=batch, progress=False, ray_actors=2))
    seconds = time.perf_counter() - t0
    if report["status"] != "succeeded" or report["rows_written"] != rows:
        raise RuntimeError(f"the {engine} job did not write every row: {report}")
    return float(report["rows_written"]) / seconds
