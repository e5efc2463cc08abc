"""The batch lane's throughput into each output, on the same input: a Parquet folder (the baseline),
the embedded store (``store://``) and Redis (``redis://...?prefix=``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Precompute:
    output: str
    """parquet, sqlite or redis."""
    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def precompute(label: str, model: Path, inp: Path, output: str, rows: int) -> Precompute:
    """One whole ``run_batch`` job (planning, reading, scoring, writing, the commit records); raises
    RuntimeError when it did not write every row."""
    from inferlane.lanes.batch import BatchJob, run_batch

    t0 = time.perf_counter()
    report = run_batch(BatchJob(model=str(model), input=str(inp), output=output, key=["id"],
                                job_id=f"bench-{label}-{time.time_ns()}", progress=False))
    seconds = time.perf_counter() - t0
    if report["status"] != "succeeded" or report["rows_written"] != rows:
        raise RuntimeError(f"the precompute into {label} did not write every row: {report}")
    return Precompute(label, rows, seconds)
