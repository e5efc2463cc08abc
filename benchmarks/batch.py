"""Batch lane benchmark: end-to-end rows/s against the raw ONNX Runtime limit and the Ray engine.

    .venv/bin/python benchmarks/batch.py                 # 2M rows, small and heavy MLP
    .venv/bin/python benchmarks/batch.py --rows 200000   # quicker

For each model, in the same run:
  raw    ONNX Runtime rows/s on the data already in memory as one array, at the same batch size,
         one session using every core (the limit no pipeline can beat)
  local  `run_batch(engine="local")`: Parquet in, Parquet out, end to end (planning, reading,
         validation, scoring, writing, fsync, manifest)
  ray    the same job with `engine="ray"` (Ray Data actor pool; Ray start-up excluded)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inferlane.demo.models import N_FEATURES, write_mlp_model
from inferlane.lanes.batch import BatchJob, run_batch

MODELS = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
TARGETS = {"small": 0.9, "heavy": 0.95}


def make_input(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    per_file = 500_000
    for i, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        cols: dict[str, object] = {"id": np.arange(start, start + n, dtype=np.int64)}
        x = rng.standard_normal((n, N_FEATURES), dtype=np.float32)
        cols.update({f"f{j}": x[:, j] for j in range(N_FEATURES)})
        pq.write_table(pa.table(cols), path / f"part-{i:03d}.parquet", row_group_size=131_072)


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


def run_job(model_dir: Path, inp: Path, out: Path, engine: str, batch: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = run_batch(BatchJob(model=str(model_dir), input=str(inp), output=str(out), key=["id"],
                                job_id=f"bench-{engine}", engine=engine,  # type: ignore[arg-type]
                                batch_size=batch, progress=False, ray_actors=2))
    seconds = time.perf_counter() - t0
    assert report["status"] == "succeeded" and report["rows_written"] > 0, report
    return float(report["rows_written"]) / seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--models", default="small,heavy")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-batch-"))
    try:
        inp = work / "input"
        t0 = time.perf_counter()
        make_input(inp, args.rows)
        print(f"generated {args.rows:,} rows x {N_FEATURES} features as Parquet in "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
        data = pq.read_table(inp).drop_columns(["id"])
        arr = np.column_stack([c.to_numpy() for c in data.columns]).astype(np.float32)
        if not args.no_ray:
            import ray

            ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False,
                     log_to_driver=False)
        rows = []
        for name in args.models.split(","):
            model_dir = write_mlp_model(work / "models", name, MODELS[name])
            raw = raw_limit(model_dir, arr, args.batch_size)
            local = run_job(model_dir, inp, work / f"out-{name}-local", "local", args.batch_size)
            ray_rps = None if args.no_ray else run_job(model_dir, inp, work / f"out-{name}-ray", "ray",
                                                        args.batch_size)
            rows.append((name, raw, local, ray_rps))
        print(f"\ncommand: {' '.join(sys.argv)}   rows: {args.rows:,}   batch: {args.batch_size}   "
              f"cores: {os.cpu_count()}\n")
        print(f"{'model':<7}{'raw rows/s':>13}{'local rows/s':>14}{'local/raw':>11}{'target':>10}"
              f"{'ray rows/s':>12}{'ray/raw':>9}{'local/ray':>11}")
        for name, raw, local, ray_rps in rows:
            ok = "pass" if local / raw >= TARGETS[name] else "MISS"
            ray_txt = (f"{ray_rps:>12,.0f}{ray_rps / raw:>9.2f}{local / ray_rps:>10.2f}x" if ray_rps
                       else f"{'-':>12}{'-':>9}{'-':>11}")
            print(f"{name:<7}{raw:>13,.0f}{local:>14,.0f}{local / raw:>11.2f}{f'{TARGETS[name]} {ok}':>10}"
                  f"{ray_txt}")
        print("\ntargets: local >= 0.9 x raw (small), >= 0.95 x raw (heavy), local >= 2.5 x ray (small)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
