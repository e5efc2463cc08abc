"""The jobs lane: durable asynchronous inference (submit → 202 + id; poll or get a callback).

    lane = JobsLane(registry, open_job_store("sqlite:///jobs.db"), JobsSettings(), metrics)
    job, created = await lane.submit("fraud", None, inputs={"features": x}, idempotency_key="k1")
    ...
    await lane.get(job.id)

A job is in the store (durable) before ``submit`` returns. Workers (worker.py) take jobs with a
lease, run them through the model's batcher at background priority, and store the result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core import codec
from inferlane.core.errors import InvalidInput
from inferlane.core.metrics import Metrics
from inferlane.core.retry import RetryPolicy
from inferlane.lanes.jobs.callbacks import validate_callback_url
from inferlane.lanes.jobs.metrics import JobsMetrics
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.jobs import JobRecord, JobStatus, JobStore


@dataclass(frozen=True)
class JobsSettings:
    lease_s: float = 60.0
    """A worker that has not renewed its lease within this long is presumed dead; the job is re-run."""
    ttl_s: float = 24 * 3600.0
    """How long finished jobs keep their result."""
    expire_interval_s: float = 30.0
    """How often a worker's housekeeping turns finished jobs past their TTL into expired tombstones."""
    max_attempts: int = 3
    """Attempts before a job is dead-lettered (status failed); only transient failures use more than one."""
    retry_backoff_s: float = 1.0
    """First retry delay; doubles each attempt (with jitter)."""
    retry_max_backoff_s: float = 300.0
    """No delay between two attempts of a job is longer than this."""
    job_timeout_s: float = 300.0
    """Deadline for one attempt's inference."""
    inline_result_max_bytes: int = 1 << 20
    """Larger results go to ``results_uri`` and the job shows ``output_uri``."""
    results_uri: str = ".inferlane/results"
    """Folder or s3:// prefix for results not kept inline."""
    local_root: Path | None = None
    """Local folder that input_uri/output_uri paths may use; None refuses local paths."""
    endpoint_url: str | None = None
    """Object-store endpoint for s3:// URIs."""
    max_request_bytes: int = 64 << 20
    """Largest request read from an input_uri."""
    callback_secret: bytes | None = None
    """HMAC key for the Inferlane-Signature header of callbacks."""
    callback_allow_private: bool = False
    """Allow callbacks to loopback/private addresses (tests, trusted networks)."""
    callback_retries: int = 5
    """Retries of a callback after a connection error, a timeout, or an HTTP 5xx or 429 answer."""
    callback_backoff_s: float = 0.5
    """First callback retry delay; doubles each retry (with jitter)."""
    workers: int = 4
    """Jobs one process runs at once (0: this process only accepts jobs)."""
    poll_interval_s: float = 0.25
    """Idle wait between claims when another process may have queued jobs."""

    def retry_policy(self) -> RetryPolicy:
        """The backoff between a job's attempts; the job's own attempt counter bounds them."""
        return RetryPolicy(attempts=self.max_attempts, backoff_s=self.retry_backoff_s,
                           max_backoff_s=self.retry_max_backoff_s)

    def callback_policy(self) -> RetryPolicy:
        """How a callback is retried: ``callback_retries`` retries after the first try."""
        return RetryPolicy(attempts=self.callback_retries + 1, backoff_s=self.callback_backoff_s)


class JobsLane:
    def __init__(self, registry: ModelRegistry, store: JobStore, settings: JobsSettings, metrics: Metrics) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.jobs_metrics = JobsMetrics(metrics)
        self.new_job = asyncio.Event()
        """Set on every local submit so local workers claim at once instead of waiting a poll."""

    async def submit(self, model: str, version: str | None, *, inputs: Mapping[str, np.ndarray] | None = None,
                     input_uri: str | None = None, request_id: str | None = None,
                     parameters: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
                     callback_url: str | None = None, output_uri: str | None = None) -> tuple[JobRecord, bool]:
        """Validate and store a job; (job, created). The same idempotency key returns the same job."""
        self.registry.resolve(model, version)  # ModelNotFound for an unknown model or version
        if (inputs is None) == (input_uri is None):
            raise InvalidInput("a job needs either inputs or input_uri (not both)")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 256:
            raise InvalidInput("Idempotency-Key must be 1 to 256 characters")
        if input_uri is not None and not input_uri.startswith("s3://") and self.settings.local_root is None:
            raise InvalidInput("input_uri: local paths are disabled on this server; use s3://")
        if callback_url is not None:
            await asyncio.to_thread(validate_callback_url, callback_url, self.settings.callback_allow_private)
        body = b""
        if inputs is not None:
            mv = self.registry.get(model, version)
            mv.check_inputs(inputs)  # invalid input fails here, before anything is stored
            body = codec.encode_infer_request(inputs, request_id, parameters)
        record = JobRecord.new(model, now=time.time(), request=body, version=version, input_uri=input_uri,
                               idempotency_key=idempotency_key, callback_url=callback_url,
                               max_attempts=self.settings.max_attempts)
        if output_uri is not None:
            record = dataclasses.replace(record, output_uri=output_uri)  # where the worker writes the result
        job, created = await asyncio.to_thread(self.store.submit, record)
        if created:
            self.new_job.set()
        return job, created

    async def get(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self.store.get, job_id)

    async def list(self, status: JobStatus | None, limit: int, model: str | None) -> list[JobRecord]:
        return await asyncio.to_thread(self.store.list, status, limit, model)

    async def cancel(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self.store.cancel, job_id)
