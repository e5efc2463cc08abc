"""A batch scoring job: plan shards, skip finished ones, score the rest on an engine, report.

    from inferlane.lanes.batch import BatchJob, run_batch
    report = run_batch(BatchJob(model="models/fraud", input="data/", output="out/scores/",
                                key=["id"], job_id="nightly-2026-11-23"))

The same function backs ``inferlane batch run``; orchestrators (Airflow, Prefect, Dagster)
call either one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.core.uri import filesystem_for
from inferlane.lanes.batch.config import BatchJob
from inferlane.lanes.batch.metrics import BatchMetrics
from inferlane.lanes.batch.shards import BatchRun, Progress, ShardScorer
from inferlane.lanes.batch.sources import Shard, list_inputs, plan_fingerprint, plan_shards
from inferlane.store.tables import open_shard_sink

log = logging.getLogger("inferlane.batch")


def plan(job: BatchJob) -> list[Shard]:
    """The job's shards (deterministic for the same input files)."""
    fs, path = filesystem_for(job.input, job.endpoint_url)
    return plan_shards(fs, list_inputs(job.input, fs, path, job.input_format), job.shard_rows)


def _check(job: BatchJob) -> None:
    if job.batch_size < 1 or job.shard_rows < 1:
        raise ConfigError("--batch-size and --shard-rows must be at least 1")
    if not 0 <= job.max_reject_ratio <= 1:
        raise ConfigError("--max-reject-ratio must be between 0 and 1")
    if job.retries < 0:
        raise ConfigError("--retries must be 0 or more")


def run_batch(job: BatchJob, on_start: Callable[[dict[str, Any]], None] | None = None,
              metrics: Metrics | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the report. Raises ConfigError for bad usage. A shard that
    fails for good is reported in the report (status ``partial``), not raised."""
    _check(job)
    started = time.time()
    metrics = metrics or Metrics()
    if job.metrics_port is not None:
        metrics.serve(job.metrics_port)
    fs, path = filesystem_for(job.input, job.endpoint_url)
    files = list_inputs(job.input, fs, path, job.input_format)
    shards = plan_shards(fs, files, job.shard_rows)
    fingerprint = plan_fingerprint(files, job.shard_rows)
    scorer = ShardScorer(job)
    model = scorer.model
    bm = BatchMetrics(metrics, model.name, model.version)
    scorer.on_forward = bm.on_forward
    sink = open_shard_sink(job.output, job_id=job.job_id, fingerprint=fingerprint, key=job.key, table=job.table,
                           fmt=job.output_format, overwrite=job.overwrite,
                           rejects_dir=Path(job.rejects_dir) if job.rejects_dir else None)
    done = sink.finished_shards()
    todo = [s for s in shards if s.id not in done]
    bm.shards_planned.set(len(shards))
    bm.rows_planned.set(sum(s.rows for s in shards))
    bm.shards_skipped.inc(len(shards) - len(todo))
    if on_start:
        on_start({"job_id": job.job_id, "shards": len(shards), "already_done": len(shards) - len(todo),
                  "model": model.name, "version": model.version})
    run = BatchRun(job, sink, bm, Progress(sum(s.rows for s in todo), job.progress))
    try:
        if job.engine == "ray":
            from inferlane.lanes.batch.ray_engine import run_ray

            model.close()  # the actors load their own replicas
            run_ray(run, todo)
        else:
            from inferlane.lanes.batch.local import run_local

            run_local(run, scorer, todo)
        run.progress.close()
        report = _report(run, model.name, model.version, shards, done, started)
        report["report_path"] = sink.write_report(report)
    finally:
        run.progress.close()
        sink.close()
    if job.pushgateway:
        try:
            metrics.push(job.pushgateway, "inferlane-batch", {"job_id": job.job_id})
        except OSError as e:  # the job is done; a monitoring outage must not fail it
            log.warning("could not push metrics to %s: %s", job.pushgateway, e)
    return report


def _report(run: BatchRun, model: str, version: str, shards: list[Shard], done: dict[str, Any],
            started: float) -> dict[str, Any]:
    job = run.job
    duration = time.time() - started
    before = {k: sum(int(r.get(k, 0)) for r in done.values()) for k in ("rows", "rejected")}
    read = run.rows_read + before["rows"] + before["rejected"]
    rejected = run.rows_rejected + before["rejected"]
    ratio = rejected / read if read else 0.0
    status = "partial" if run.failures or ratio > job.max_reject_ratio else "succeeded"
    report: dict[str, Any] = {
        "job_id": job.job_id,
        "status": status,
        "model": model,
        "model_version": version,
        "engine": job.engine,
        "input": job.input,
        "output": run.sink.description,
        "rows_read": read,
        "rows_written": run.rows_written + before["rows"],
        "rows_rejected": rejected,
        "reject_ratio": round(ratio, 6),
        "max_reject_ratio": job.max_reject_ratio,
        "shards_total": len(shards),
        "shards_skipped_already_done": len(done),
        "shards_committed": len(shards) - len(done) - len(run.failures),
        "shards_failed": len(run.failures),
        "failures": run.failures,
        "retries": run.retries,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(duration, 3),
        "rows_per_s": round(run.rows_read / duration, 1) if duration else 0.0,
    }
    if job.cost_per_hour is not None:
        report["cost_per_hour"] = job.cost_per_hour
        report["estimated_cost"] = round(job.cost_per_hour * duration / 3600.0, 6)
    return report
