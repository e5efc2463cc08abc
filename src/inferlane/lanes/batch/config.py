"""A batch job's settings and outcomes: what ``inferlane batch run`` and orchestrators pass in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferlane.core.errors import InferlaneError
from inferlane.core.retry import RetryPolicy
from inferlane.core.state import state_dir
from inferlane.lanes.batch.sources import Format

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class ShardFailed(InferlaneError):
    """A shard failed for good (a permanent error, or transient ones past the retry policy)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the job between shards; ``message`` says how far it got. Being a
    KeyboardInterrupt, it stops callers that do not look for it the usual way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def default_state_dir() -> Path:
    """Where a batch job keeps files that belong to no output folder (the report and rejects of a
    database output): the state folder of every lane (``core/state.py``: ``$INFERLANE_STATE_DIR``,
    else ``.inferlane`` under the current directory)."""
    return state_dir()


@dataclass(frozen=True)
class BatchJob:
    model: str
    """Model folder (``<repo>/<name>``) holding model.yaml and version folders."""
    input: str
    """A file, a folder, a glob, or an ``s3://`` URI of Parquet, CSV or JSONL files."""
    output: str
    """A folder (Parquet by default), ``sqlite:///file.db``, ``postgresql://...``, or a key-value
    store for the hybrid lane: ``store://NAME`` or ``redis://host:port/db?prefix=NAME``."""
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
    """Model threads; 0 = every CPU the process may use (core/cpus.py)."""
    max_reject_ratio: float = 0.01
    retries: int = 3
    retry_backoff_s: float = 0.5
    cost_per_hour: float | None = None
    endpoint_url: str | None = None
    """Object-store endpoint for s3:// URIs (e.g. a local S3-compatible server)."""
    overwrite: bool = False
    rejects_dir: str | None = None
    ttl_s: float | None = None
    """A key-value store output's time to live, in seconds (None: kept until overwritten)."""
    state_dir: str | None = None
    """Folder for a database or store output's report and rejects, as ``batch/<job_id>-report.json`` and
    ``batch/<job_id>-rejects/`` (default :func:`default_state_dir`)."""
    limit: int | None = None
    """Score only the first ``limit`` rows of the plan (part of the plan: a resumed run needs the same)."""
    progress: bool = True
    ray_actors: int = 2
    metrics_port: int | None = None
    """Serve Prometheus metrics on 127.0.0.1:PORT while the job runs."""
    pushgateway: str | None = None
    """Push the job's metrics to this Prometheus Pushgateway when it ends."""

    @property
    def retry_policy(self) -> RetryPolicy:
        """Transient failures of a shard's read, score or commit (core/retry.py decides which)."""
        return RetryPolicy(attempts=self.retries + 1, backoff_s=self.retry_backoff_s)
