"""A batch scoring job: plan shards, skip finished ones, score the rest, write a report.

    from inferlane.lanes.batch import BatchJob, run_batch
    report = run_batch(BatchJob(model="models/fraud", input="data/", output="out/scores/",
                                key=["id"], job_id="nightly-2026-11-23"))

The same function backs ``inferlane batch run``; orchestrators (Airflow, Prefect, Dagster)
call either one.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from inferlane.core.errors import ConfigError, InferlaneError
from inferlane.core.model import ModelVersion
from inferlane.core.repository import scan_model
from inferlane.core.spec import OnnxOptions
from inferlane.core.uri import filesystem_for
from inferlane.lanes.batch.features import FeatureMapper, Prepared
from inferlane.lanes.batch.sinks import Sink, open_sink
from inferlane.lanes.batch.sources import (
    Format,
    Shard,
    list_inputs,
    plan_fingerprint,
    plan_shards,
    read_shard,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


@dataclass(frozen=True)
class BatchJob:
    model: str
    """Model folder (``<repo>/<name>``) holding model.yaml and version folders."""
    input: str
    """A file, a folder, a glob, or an ``s3://`` URI of Parquet, CSV or JSONL files."""
    output: str
    """A folder (Parquet by default), ``sqlite:///file.db`` or ``postgresql://...``."""
    key: list[str]
    """Column(s) identifying a row; written with the outputs and used for upserts."""
    job_id: str
    """Re-running the same id resumes: finished shards are skipped."""
    version: str | None = None
    columns: dict[str, list[str]] = field(default_factory=dict)
    """Input name → feeding columns (names or globs). Default: all non-key columns."""
    output_format: Literal["parquet", "csv", "jsonl"] = "parquet"
    table: str | None = None
    input_format: Format | None = None
    engine: Literal["local", "ray"] = "local"
    batch_size: int = 4096
    shard_rows: int = 262_144
    threads: int = 0
    """Model threads; 0 = every core."""
    max_reject_ratio: float = 0.01
    retries: int = 3
    retry_backoff_s: float = 0.5
    cost_per_hour: float | None = None
    endpoint_url: str | None = None
    """Object-store endpoint for s3:// URIs (e.g. a local S3-compatible server)."""
    overwrite: bool = False
    rejects_dir: str | None = None
    progress: bool = True
    ray_actors: int = 2


class ShardFailed(InferlaneError):
    """A shard kept failing after every retry."""


TRANSIENT: tuple[type[BaseException], ...] = (OSError, sqlite3.OperationalError)
try:  # PostgreSQL connection problems are transient too
    import psycopg

    TRANSIENT = (*TRANSIENT, psycopg.OperationalError)
except ImportError:  # pragma: no cover - psycopg is in the batch extra
    pass


@dataclass
class ShardResult:
    shard: Shard
    table: pa.Table
    rejects: list[dict[str, Any]]
    rows_read: int


def load_model(job: BatchJob) -> ModelVersion:
    return open_model(job.model, job.version, job.threads)


def open_model(folder: str, version: str | None, threads: int = 0) -> ModelVersion:
    """A model version from its folder, for lanes that run whole batches themselves (no batcher):
    ONNX gets ``threads`` intra-op threads (0: every core) and no spinning between batches."""
    entry = scan_model(Path(folder))
    version = version or entry.default_version
    if version not in entry.versions:
        raise ConfigError(f"--version {version}: model {entry.name} has versions {list(entry.versions)}")
    config = entry.config
    if config.runtime == "onnx":
        onnx = config.onnx or OnnxOptions()
        onnx = onnx.model_copy(update={"intra_op_num_threads": threads or (os.cpu_count() or 1),
                                       "allow_spinning": False})
        config = config.model_copy(update={"onnx": onnx})
    return ModelVersion.load(config, entry.path, version)


@dataclass
class LoadedShard:
    """A shard read and validated, ready for the model."""

    shard: Shard
    prepared: list[Prepared]
    rejects: list[dict[str, Any]]
    rows_read: int


def load_shard(mapper: FeatureMapper, fs: pafs.FileSystem, shard: Shard, batch_size: int) -> LoadedShard:
    """Read and validate one shard (I/O and parsing: runs beside the model in the local engine)."""
    data = read_shard(fs, shard, max(batch_size, 65_536))
    rejects: list[dict[str, Any]] = [
        {"shard": shard.id, "row": row, "key": None, "reason": reason} for row, reason in data.unparsable]
    offset = shard.start
    rows_read = len(data.unparsable)
    prepared_batches = []
    for batch in data.batches:
        prepared = mapper.prepare(batch)
        rows_read += prepared.rows
        for i, key, reason in prepared.rejects:
            rejects.append({"shard": shard.id, "row": offset + i, "key": key, "reason": reason})
        offset += batch.num_rows
        prepared_batches.append(prepared)
    return LoadedShard(shard, prepared_batches, rejects, rows_read)


def score_loaded(model: ModelVersion, mapper: FeatureMapper, loaded: LoadedShard, batch_size: int) -> ShardResult:
    """Run the model over a loaded shard in ``batch_size`` chunks and assemble the output table."""
    scored_at = datetime.now(UTC).replace(microsecond=0)
    tables: list[pa.Table] = []
    for prepared in loaded.prepared:
        n = len(next(iter(prepared.inputs.values())))
        if n == 0:
            continue
        outs: list[dict[str, np.ndarray]] = []
        for lo in range(0, n, batch_size):
            chunk = {k: v[lo:lo + batch_size] for k, v in prepared.inputs.items()}
            outs.append(model.forward(chunk))
        outputs = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
        for name, arr in outputs.items():
            if len(arr) != n:
                raise InferlaneError(f"model output {name!r} has {len(arr)} rows for {n} input rows")
        tables.append(mapper.output_table(prepared, outputs, model.name, model.version, scored_at))
    table = pa.concat_tables(tables) if tables else pa.table({})
    return ShardResult(loaded.shard, table, loaded.rejects, loaded.rows_read)


def score_shard(model: ModelVersion, mapper: FeatureMapper, fs: pafs.FileSystem, shard: Shard,
                batch_size: int) -> ShardResult:
    """Read, validate, score and assemble one shard (what a Ray actor does per shard)."""
    return score_loaded(model, mapper, load_shard(mapper, fs, shard, batch_size), batch_size)


@dataclass
class Progress:
    total_rows: int
    enabled: bool
    _bar: Any = None

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_rows, unit="rows", unit_scale=True, dynamic_ncols=True,
                             smoothing=0.1)

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def with_retries(fn: Callable[[], T], shard: Shard, job: BatchJob, counter: list[int]) -> T:
    for attempt in range(job.retries + 1):
        try:
            return fn()
        except (ConfigError, ShardFailed):
            raise
        except InferlaneError as e:  # the model or its outputs are wrong: retrying cannot help
            raise ShardFailed(f"shard {shard.id} ({shard.file.path}): {e.message}") from e
        except TRANSIENT as e:
            if attempt == job.retries:
                raise ShardFailed(f"shard {shard.id} ({shard.file.path} rows {shard.start}-{shard.stop}) "
                                  f"failed {attempt + 1} times; last error: {type(e).__name__}: {e}") from e
            counter[0] += 1
            delay = job.retry_backoff_s * (2 ** attempt) * (0.5 + random.random())
            log.warning("shard %s: %s: %s; retry %d/%d in %.1f s", shard.id, type(e).__name__, e,
                        attempt + 1, job.retries, delay)
            time.sleep(delay)
        except Exception as e:  # corrupt data, a model bug: fail this shard, keep the job going
            raise ShardFailed(f"shard {shard.id} ({shard.file.path}): {type(e).__name__}: {e}") from e
    raise AssertionError("unreachable")


def run_batch(job: BatchJob, on_start: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or resume) a job; returns the report. Raises ConfigError for bad usage and
    ShardFailed when a shard kept failing."""
    if job.batch_size < 1 or job.shard_rows < 1:
        raise ConfigError("--batch-size and --shard-rows must be at least 1")
    if not 0 <= job.max_reject_ratio <= 1:
        raise ConfigError("--max-reject-ratio must be between 0 and 1")
    started = time.time()
    fs, path = filesystem_for(job.input, job.endpoint_url)
    files = list_inputs(job.input, fs, path, job.input_format)
    shards = plan_shards(fs, files, job.shard_rows)
    fingerprint = plan_fingerprint(files, job.shard_rows)
    model = load_model(job)
    mapper = FeatureMapper.create(model.config, job.key, job.columns)
    sink = open_sink(job.output, job_id=job.job_id, fingerprint=fingerprint, key=job.key, table=job.table,
                     fmt=job.output_format, overwrite=job.overwrite,
                     rejects_dir=Path(job.rejects_dir) if job.rejects_dir else None)
    done = sink.finished_shards()
    todo = [s for s in shards if s.id not in done]
    info = {"job_id": job.job_id, "shards": len(shards), "already_done": len(shards) - len(todo),
            "model": model.name, "version": model.version}
    if on_start:
        on_start(info)
    total_rows = sum(s.rows for s in todo)
    progress = Progress(total_rows, job.progress)
    counters = {"rows_read": 0, "rows_written": 0, "rows_rejected": 0}
    retries = [0]
    failed: list[str] = []
    try:
        if job.engine == "ray":
            from inferlane.lanes.batch.ray_engine import run_ray

            run_ray(job, todo, sink, counters, retries, failed, progress)
        else:
            _run_local(job, model, mapper, fs, todo, sink, counters, retries, failed, progress)
    finally:
        progress.close()
        sink.close()
    for rec in done.values():
        counters["rows_written"] += int(rec.get("rows", 0))
        counters["rows_rejected"] += int(rec.get("rejected", 0))
        counters["rows_read"] += int(rec.get("rows", 0)) + int(rec.get("rejected", 0))
    duration = time.time() - started
    report = _report(job, model, shards, done, todo, counters, retries[0], failed, started, duration, sink)
    return report


def commit_shard(job: BatchJob, sink: Sink, res: ShardResult, counters: dict[str, int], retries: list[int],
            failed: list[str], progress: Progress) -> None:
    """Commit one scored shard (every engine): retried on transient errors; a permanent failure
    is reported in ``failed`` and the job goes on."""
    def attempt() -> ShardResult:
        sink.commit(res.shard.id, res.table, res.rejects)
        return res

    try:
        with_retries(attempt, res.shard, job, retries)
    except ShardFailed as e:
        failed.append(str(e))
        log.error("%s", e)
        return
    counters["rows_read"] += res.rows_read
    counters["rows_written"] += res.table.num_rows
    counters["rows_rejected"] += len(res.rejects)
    progress.advance(res.shard.rows)


def _run_local(job: BatchJob, model: ModelVersion, mapper: FeatureMapper, fs: pafs.FileSystem,
               todo: list[Shard], sink: Sink, counters: dict[str, int], retries: list[int],
               failed: list[str], progress: Progress) -> None:
    """Three stages overlap: a reader thread reads and validates the next shards, this thread runs
    the model (one caller, so the model's own threads use every core), and a writer thread
    commits finished shards in order."""
    from concurrent.futures import Future, ThreadPoolExecutor

    def read(shard: Shard) -> LoadedShard:
        return with_retries(lambda: load_shard(mapper, fs, shard, job.batch_size), shard, job, retries)

    def work(shard: Shard, reading: Future[LoadedShard]) -> ShardResult:
        data = reading.result()
        return with_retries(lambda: score_loaded(model, mapper, data, job.batch_size), shard, job, retries)

    def commit(res: ShardResult) -> None:
        commit_shard(job, sink, res, counters, retries, failed, progress)

    with ThreadPoolExecutor(1, thread_name_prefix="batch-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="batch-write") as writer:
        reads: dict[int, Future[LoadedShard]] = {i: reader.submit(read, s) for i, s in enumerate(todo[:2])}
        writes: list[Future[None]] = []
        for i in range(len(todo)):
            if i + 2 < len(todo):
                reads[i + 2] = reader.submit(read, todo[i + 2])  # at most two shards read ahead
            res: ShardResult | None
            try:
                res = work(todo[i], reads.pop(i))
            except ShardFailed as e:
                failed.append(str(e))
                log.error("%s", e)
                res = None
            if res is not None:
                if len(writes) >= 2:
                    writes[-2].result()  # at most two scored shards wait for the writer
                writes.append(writer.submit(commit, res))
        for w in writes:
            w.result()


def _report(job: BatchJob, model: ModelVersion, shards: list[Shard], done: dict[str, Any], todo: list[Shard],
            counters: dict[str, int], retries: int, failed: list[str], started: float, duration: float,
            sink: Sink) -> dict[str, Any]:
    read = counters["rows_read"]
    ratio = counters["rows_rejected"] / read if read else 0.0
    status = "succeeded"
    if failed or ratio > job.max_reject_ratio:
        status = "partial"
    report: dict[str, Any] = {
        "job_id": job.job_id,
        "status": status,
        "model": model.name,
        "model_version": model.version,
        "engine": job.engine,
        "input": job.input,
        "output": sink.description,
        "rows_read": read,
        "rows_written": counters["rows_written"],
        "rows_rejected": counters["rows_rejected"],
        "reject_ratio": round(ratio, 6),
        "max_reject_ratio": job.max_reject_ratio,
        "shards_total": len(shards),
        "shards_skipped_already_done": len(done),
        "shards_committed": len(todo) - len(failed),
        "shards_failed": len(failed),
        "failures": failed,
        "retries": retries,
        "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
        "duration_s": round(duration, 3),
        "rows_per_s": round((read - sum(int(r.get("rows", 0)) + int(r.get("rejected", 0))
                                        for r in done.values())) / duration, 1) if duration else 0.0,
    }
    if job.cost_per_hour is not None:
        report["cost_per_hour"] = job.cost_per_hour
        report["estimated_cost"] = round(job.cost_per_hour * duration / 3600.0, 6)
    report["report_path"] = sink.write_report(report)
    return report
