"""``python -m benchmarks.batch``: rows/s of the batch lane against the raw model and the Ray engine.

    .venv/bin/python -m benchmarks.batch                 # 2M rows, small and heavy MLP, about 4 minutes
    .venv/bin/python -m benchmarks.batch --quick         # 100,000 rows (under a minute)
    .venv/bin/python -m benchmarks.batch --rows 200000 --no-ray

Exit status 1 (a traceback) when a job did not write every row; a missed target is reported only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.batch.measure import MODELS, TARGETS, load_features, make_input, raw_limit, run_job
from benchmarks.common import command_line, load_average, logger, machine_line
from inferlane.testing import Column, format_table, num, ratio

log = logger("batch-bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100,000 rows (under a minute)")
    ap.add_argument("--rows", type=int, default=None, help="rows (default 2,000,000; 100,000 with --quick)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--models", default="small,heavy", help="comma-separated: small, heavy (default both)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    args = ap.parse_args(argv)
    args.rows = args.rows or (100_000 if args.quick else 2_000_000)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or not set(args.models) <= set(MODELS):
        ap.error(f"--models takes {', '.join(MODELS)}")
    return args


def table(rows: list[tuple[str, float, float, float | None]]) -> str:
    cols = [Column("model", left=True), Column("raw rows/s"), Column("local rows/s"), Column("local/raw"),
            Column("target", left=True), Column("ray rows/s"), Column("ray/raw"), Column("local/ray")]
    cells = []
    for name, raw, local, ray_rps in rows:
        ok = "pass" if local / raw >= TARGETS[name] else "MISS"
        cells.append([name, num(raw, ",.0f"), num(local, ",.0f"), num(local / raw, ".2f"), f">= {TARGETS[name]} {ok}",
                      num(ray_rps, ",.0f"), num(ray_rps / raw if ray_rps else None, ".2f"),
                      ratio(local / ray_rps if ray_rps else None)])
    return format_table(cols, cells)


def main(argv: list[str] | None = None) -> int:
    from inferlane.demo.models import N_FEATURES, write_mlp_model

    args = parse_args(argv)
    started, load_before = time.time(), load_average()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-batch-"))
    try:
        inp = work / "input"
        t0 = time.perf_counter()
        make_input(inp, args.rows)
        log(f"generated {args.rows:,} rows x {N_FEATURES} features as Parquet in {time.perf_counter() - t0:.1f} s")
        arr = load_features(inp)
        if not args.no_ray:
            import ray

            ray.init(num_cpus=max(4, 2 * (os.cpu_count() or 1)), include_dashboard=False, log_to_driver=False)
        rows = []
        for name in args.models:
            model_dir = write_mlp_model(work / "models", name, MODELS[name])
            raw = raw_limit(model_dir, arr, args.batch_size)
            local = run_job(model_dir, inp, work / f"out-{name}-local", "local", args.batch_size, args.rows)
            ray_rps = None if args.no_ray else run_job(model_dir, inp, work / f"out-{name}-ray", "ray",
                                                        args.batch_size, args.rows)
            log(f"{name}: raw {raw:,.0f}, local {local:,.0f}" + ("" if ray_rps is None else f", ray {ray_rps:,.0f}")
                + " rows/s")
            rows.append((name, raw, local, ray_rps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    print(f"\ncommand: {command_line()}   rows: {args.rows:,}   batch: {args.batch_size}")
    print(machine_line(load_before, load_average(), time.time() - started))
    print("raw = ONNX Runtime alone on the data in memory, one session on every core; local = inferlane batch end "
          "to end (Parquet in and out); ray = --engine ray, Ray started beforehand. Targets: local >= 0.9 x raw "
          "(small), >= 0.95 x raw (heavy).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
