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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.core.uri import filesystem_for
from inferlane.core.urls import scheme
from inferlane.lanes.batch.config import BatchJob, Interrupted, default_state_dir
from inferlane.lanes.batch.metrics import BatchMetrics
from inferlane.lanes.batch.shards import BatchRun, Progress, ShardScorer
from inferlane.lanes.batch.sources import InputFile, Shard, limit_shards, list_inputs, plan_fingerprint, plan_shards
from inferlane.store.lanes import LaneReporter
from inferlane.store.tables import inspect_shard_sink, open_shard_sink

log = logging.getLogger("inferlane.batch")
DRY_RUN_SAMPLE = 1000
"""Rows of the first shard a dry run reads and decodes to check the model's signature."""


def plan(job: BatchJob) -> list[Shard]:
    """The job's shards (deterministic for the same input files, --shard-rows and --limit)."""
    return _plan(job)[1]


def _plan(job: BatchJob) -> tuple[list[InputFile], list[Shard], str]:
    fs, path = filesystem_for(job.input, job.endpoint_url)
    files = list_inputs(job.input, fs, path, job.input_format)
    shards = limit_shards(plan_shards(fs, files, job.shard_rows), job.limit)
    return files, shards, plan_fingerprint(files, job.shard_rows, job.limit)


def _check(job: BatchJob) -> None:
    """Usage errors found from the arguments alone, before any input is read or model loaded."""
    if job.batch_size < 1 or job.shard_rows < 1:
        raise ConfigError("--batch-size and --shard-rows must be at least 1")
    if not 0 <= job.max_reject_ratio <= 1:
        raise ConfigError("--max-reject-ratio must be between 0 and 1")
    if job.retries < 0:
        raise ConfigError("--retries must be 0 or more")
    if job.ttl_s is not None and not job.ttl_s > 0:
        raise ConfigError("--ttl must be a positive duration, such as 24h")
    if job.limit is not None and job.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if not job.job_id or job.job_id in (".", "..") or any(c in job.job_id for c in "/\\\0"):
        raise ConfigError(f"--job-id {job.job_id[:100]!r}: a name without / or \\ (it names the job's files)")
    _check_output_place(job)


def _local(uri: str) -> Path | None:
    s = scheme(uri)
    return Path(uri[len("file://"):]) if s == "file" else Path(uri) if s == "" else None


def _check_output_place(job: BatchJob) -> None:
    """An output folder never equals, holds or sits inside the input: --overwrite would delete the
    input, and a re-run would read the outputs as inputs."""
    out, inp = _local(job.output), _local(job.input)
    if out is None or inp is None:
        return
    text = str(inp)
    wild = [text.index(c) for c in "*?[" if c in text]
    root = Path(text[:min(wild)].rsplit("/", 1)[0] or "/") if wild else inp
    o, i = out.resolve(), root.resolve()
    if o == i or i.is_relative_to(o):
        raise ConfigError(f"--output {job.output} {'is' if o == i else 'holds'} the input ({job.input}); "
                          "write the outputs to a folder outside the input")
    if (wild or i.is_dir()) and o.is_relative_to(i):
        raise ConfigError(f"--output {job.output} is inside --input {job.input}: a re-run would read the "
                          "outputs as inputs; write them to a folder outside the input")


def _progress_report(run: BatchRun, model: str, version: str, shards: list[Shard],
                     done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the batch job shows on the server's /dashboard: rows and shards done (before this run too) of planned."""
    return {"model": model, "version": version, "rows_planned": sum(s.rows for s in shards),
            "rows_done": sum(s.rows for s in shards if s.id in done) + run.rows_read,
            "shards_planned": len(shards), "shards_done": len(done) + run.shards_committed + len(run.failures)}


def _state_dir(job: BatchJob) -> Path:
    return Path(job.state_dir) if job.state_dir else default_state_dir()


def run_batch(job: BatchJob, on_start: Callable[[dict[str, Any]], None] | None = None,
              metrics: Metrics | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the report. Raises ConfigError for bad usage, and
    Interrupted (a KeyboardInterrupt) saying how far it got on Ctrl-C. A shard that fails for good
    is reported in the report (status ``partial``), not raised."""
    _check(job)
    started = time.time()
    _, shards, fingerprint = _plan(job)
    metrics = metrics or Metrics()
    scorer = ShardScorer(job)
    model = scorer.model
    # NOTE: the model is closed on every way out, so its native thread pool is joined here and never
    # torn down by interpreter exit (which could abort the process after a usage error).
    closed = False

    def close_model() -> None:
        nonlocal closed
        if not closed:
            closed = True
            model.close()

    try:
        sink = open_shard_sink(job.output, job_id=job.job_id, fingerprint=fingerprint, key=job.key, table=job.table,
                               fmt=job.output_format, overwrite=job.overwrite,
                               rejects_dir=Path(job.rejects_dir) if job.rejects_dir else None,
                               state_dir=_state_dir(job), outputs=model.config.outputs, ttl_s=job.ttl_s)
    except BaseException:
        close_model()
        raise
    if job.metrics_port is not None:
        metrics.serve(job.metrics_port)
    bm = BatchMetrics(metrics, model.name, model.version)
    scorer.on_forward = bm.on_forward
    done = sink.finished_shards()
    todo = [s for s in shards if s.id not in done]
    bm.shards_planned.set(len(shards))
    bm.rows_planned.set(sum(s.rows for s in shards))
    bm.shards_skipped.inc(len(shards) - len(todo))
    if on_start:
        on_start({"job_id": job.job_id, "shards": len(shards), "already_done": len(shards) - len(todo),
                  "model": model.name, "version": model.version})
    run = BatchRun(job, sink, bm, Progress(sum(s.rows for s in todo), job.progress))
    reporter = LaneReporter("batch", job.job_id, lambda: _progress_report(run, model.name, model.version, shards, done))
    reporter.start()  # progress for the server's /dashboard (store/lanes.py)
    try:
        try:
            if job.engine == "ray":
                from inferlane.lanes.batch.ray_engine import run_ray

                close_model()  # the actors load their own replicas
                run_ray(run, todo)
            else:
                from inferlane.lanes.batch.local import run_local

                run_local(run, scorer, todo)
        except KeyboardInterrupt:
            run.progress.close()
            raise Interrupted(_interrupted(run, shards, done)) from None
        run.progress.close()
        report = _report(run, model.name, model.version, shards, done, started)
        report["report_path"] = sink.write_report(report)
    finally:
        run.progress.close()
        reporter.close()
        sink.close()
        close_model()
    if job.pushgateway:
        try:
            metrics.push(job.pushgateway, "inferlane-batch", {"job_id": job.job_id})
        except OSError as e:  # the job is done; a monitoring outage must not fail it
            log.warning("could not push metrics to %s: %s", job.pushgateway, e)
    return report


def _interrupted(run: BatchRun, shards: list[Shard], done: dict[str, Any]) -> str:
    finished = len(done) + run.shards_committed
    return (f"interrupted: {finished} of {len(shards)} shards done ({run.shards_committed} this run, "
            f"{run.rows_read} rows read this run, {len(done)} by earlier runs); re-run the same command "
            "to resume: finished shards are skipped")


def dry_run(job: BatchJob) -> dict[str, Any]:
    """Plan and validate without writing anything: the inputs and their shards, the output (and
    what an earlier run of the job finished there), and the model's signature against a sample of
    the first shard's rows. Raises ConfigError where ``run_batch`` would."""
    _check(job)
    files, shards, fingerprint = _plan(job)
    output, done = inspect_shard_sink(job.output, job_id=job.job_id, fingerprint=fingerprint, key=job.key,
                                      table=job.table, overwrite=job.overwrite, ttl_s=job.ttl_s)
    scorer = ShardScorer(job)
    try:
        first = shards[0]
        sample = scorer.load(replace(first, stop=first.start + min(first.rows, DRY_RUN_SAMPLE)))
        model, version = scorer.model.name, scorer.model.version
    finally:
        scorer.model.close()
    todo = [s for s in shards if s.id not in done]
    return {
        "job_id": job.job_id,
        "dry_run": True,
        "model": model,
        "model_version": version,
        "input": job.input,
        "input_files": len(files),
        "output": output,
        "rows_planned": sum(s.rows for s in shards),
        "shards_total": len(shards),
        "shards_already_done": len(shards) - len(todo),
        "shards_to_run": len(todo),
        "rows_to_run": sum(s.rows for s in todo),
        "sample_rows": sample.rows_read,
        "sample_rejected": len(sample.rejects),
        "sample_reject_reasons": sorted({r["reason"] for r in sample.rejects})[:5],
    }


def _report(run: BatchRun, model: str, version: str, shards: list[Shard], done: dict[str, Any],
            started: float) -> dict[str, Any]:
    """The whole job's counts (every run so far), then what this run did and what earlier runs of
    the same job id had done (a resumed run skips their shards)."""
    job = run.job
    duration = time.time() - started
    before = {k: sum(int(r.get(k, 0)) for r in done.values()) for k in ("rows", "rejected")}
    read_before = before["rows"] + before["rejected"]
    read = run.rows_read + read_before
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
        "limit": job.limit,
        # The whole job, every run so far:
        "rows_read": read,
        "rows_written": run.rows_written + before["rows"],
        "rows_rejected": rejected,
        "reject_ratio": round(ratio, 6),
        "max_reject_ratio": job.max_reject_ratio,
        "shards_total": len(shards),
        "shards_done": len(done) + run.shards_committed,
        # This run:
        "rows_read_this_run": run.rows_read,
        "rows_written_this_run": run.rows_written,
        "rows_rejected_this_run": run.rows_rejected,
        "shards_committed": run.shards_committed,
        "shards_failed": len(run.failures),
        "failures": run.failures,
        "retries": run.retries,
        # Earlier runs of the same job id (this run skipped their shards):
        "shards_skipped_already_done": len(done),
        "rows_read_earlier_runs": read_before,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(duration, 3),
        "rows_per_s": round(run.rows_read / duration, 1) if duration else 0.0,
    }
    if job.cost_per_hour is not None:
        report["cost_per_hour"] = job.cost_per_hour
        report["estimated_cost"] = round(job.cost_per_hour * duration / 3600.0, 6)
    return report
