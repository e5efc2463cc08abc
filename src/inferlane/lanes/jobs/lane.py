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
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferlane.core import codec, tracing
from inferlane.core.errors import ConfigError, InvalidInput, Unavailable
from inferlane.core.metrics import Metrics
from inferlane.core.retry import RetryPolicy
from inferlane.core.state import state_dir
from inferlane.core.urls import redact
from inferlane.lanes.jobs.access import ApiKeys
from inferlane.lanes.jobs.callbacks import validate_callback_url
from inferlane.lanes.jobs.metrics import JobsMetrics
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.jobs import JobRecord, JobStatus, JobStore

S3_ALLOW_ENV = "INFERLANE_JOBS_S3_ALLOW"
LOCAL_ROOT_ENV = "INFERLANE_JOBS_LOCAL_ROOT"


log = logging.getLogger(__name__)

def parse_s3_allow(value: str | None) -> tuple[str, ...]:
    """``s3://bucket[/prefix]`` entries, comma-separated; ConfigError naming the variable."""
    entries = tuple(e.strip().rstrip("/") for e in (value or "").split(",") if e.strip())
    for e in entries:
        if not e.startswith("s3://") or not e[len("s3://"):].split("/", 1)[0]:
            raise ConfigError(f"{S3_ALLOW_ENV}: {e!r} is not s3://bucket or s3://bucket/prefix")
    return entries


def s3_allowed(uri: str, allow: tuple[str, ...]) -> bool:
    """True when ``uri`` is one of ``allow`` or under one of them (at a ``/`` boundary)."""
    if any(part in (".", "..") for part in uri[len("s3://"):].split("/")):
        return False
    return any(uri == e or uri.startswith(e + "/") for e in allow)


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
    results_uri: str = field(default_factory=lambda: str(state_dir() / "results"))
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
    s3_allow: tuple[str, ...] = ()
    """``s3://bucket[/prefix]`` that input_uri and output_uri may name (empty: s3:// refused)."""
    callback_concurrency: int = 16
    """Callbacks one process delivers at once."""
    callback_hold_s: float = 300.0
    """A pending callback taken by a dispatcher is hidden from the others this long (a dispatcher
    that dies mid-delivery leaves it to another one after this)."""
    poll_interval_s: float = 0.25
    """Idle wait between claims when another process may have queued jobs."""

    def retry_policy(self) -> RetryPolicy:
        """The backoff between a job's attempts; the job's own attempt counter bounds them."""
        return RetryPolicy(attempts=self.max_attempts, backoff_s=self.retry_backoff_s,
                           max_backoff_s=self.retry_max_backoff_s)

    def callback_policy(self) -> RetryPolicy:
        """How a callback is retried: ``callback_retries`` retries after the first try."""
        return RetryPolicy(attempts=self.callback_retries + 1, backoff_s=self.callback_backoff_s)


def check_store(store: JobStore, store_url: str) -> None:
    """At start, one read of the job store: ConfigError when it refuses us for good (wrong
    credentials), so a misconfigured server or worker stops with one line instead of retrying
    forever; a store that is only unreachable now is logged and left to the worker's backoff."""
    try:
        store.stats(time.time())
    except Unavailable as e:
        log.warning("job store %s: %s; the worker retries it with backoff", redact(store_url), e.message)


@dataclass(frozen=True, slots=True)
class RawRequest:
    """A V2 request body exactly as received (stored as is, so BYTES inputs stay byte-exact)."""

    body: bytes
    header_length: int | None = None
    """The JSON header's length when the body uses the binary tensor extension."""


class JobsLane:
    def __init__(self, registry: ModelRegistry, store: JobStore, settings: JobsSettings, metrics: Metrics, *,
                 api_keys: ApiKeys | None = None) -> None:
        self.registry = registry
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.api_keys = api_keys
        self.jobs_metrics = JobsMetrics(metrics)
        self.new_job = asyncio.Event()
        """Set on every local submit so local workers claim at once instead of waiting a poll."""
        self.worker_problem: str | None = None
        """Why this process's job worker is not running jobs now (set by the worker); None when fine."""

    def tenant(self, authorization: str | None) -> str:
        """The tenant an ``Authorization`` header names ("" when the server has no API keys); 401 otherwise."""
        return "" if self.api_keys is None else self.api_keys.tenant_of(authorization)

    def _check_uri(self, field: str, uri: str) -> None:
        if uri.startswith("s3://"):
            if not s3_allowed(uri, self.settings.s3_allow):
                raise InvalidInput(f"{field} {uri[:200]!r} is not under an allowed s3:// prefix; the server's "
                                   f"{S3_ALLOW_ENV} lists them")
        elif "://" in uri:
            raise InvalidInput(f"{field} must be an s3:// URI or a local path, not {uri[:200]!r}")
        elif self.settings.local_root is None:
            raise InvalidInput(f"{field}: local paths are disabled on this server (it sets no {LOCAL_ROOT_ENV}); "
                               "use s3://")

    async def submit(self, model: str, version: str | None, *, inputs: Mapping[str, np.ndarray] | None = None,
                     input_uri: str | None = None, request_id: str | None = None,
                     parameters: Mapping[str, Any] | None = None, idempotency_key: str | None = None,
                     callback_url: str | None = None, output_uri: str | None = None, tenant: str = "",
                     raw: RawRequest | None = None, trace_parent: str | None = None) -> tuple[JobRecord, bool]:
        """Validate and store a job; (job, created). The same idempotency key of the same tenant
        returns the same job. ``raw``: the body ``inputs`` were parsed from, stored instead of a
        re-encoding (lossless). ``trace_parent``: the submitter's W3C traceparent (traces on: the
        submit, the job's run and its callback are spans of that trace)."""
        self.registry.resolve(model, version)  # ModelNotFound for an unknown model or version
        if (inputs is None) == (input_uri is None):
            raise InvalidInput("a job needs either inputs or input_uri (not both)")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 256:
            raise InvalidInput("Idempotency-Key must be 1 to 256 characters")
        if input_uri is not None:
            self._check_uri("input_uri", input_uri)
        if output_uri is not None:
            self._check_uri("output_uri", output_uri)
        if callback_url is not None:
            await asyncio.to_thread(validate_callback_url, callback_url, self.settings.callback_allow_private)
        body, header_length = b"", None
        if inputs is not None:
            mv = self.registry.get(model, version)
            mv.check_inputs(inputs)  # invalid input fails here, before anything is stored
            if raw is not None:
                body, header_length = raw.body, raw.header_length
            else:
                body = codec.encode_infer_request(inputs, request_id, parameters)
        attributes = {"inferlane.model": model, "inferlane.lane": "jobs"}
        with tracing.live_span(f"submit job {model}", parent=trace_parent, attributes=attributes,
                               kind="server") as (span, _):
            record = JobRecord.new(model, now=time.time(), request=body, version=version, input_uri=input_uri,
                                   idempotency_key=idempotency_key, callback_url=callback_url,
                                   max_attempts=self.settings.max_attempts, tenant=tenant,
                                   request_header_length=header_length, output_uri=output_uri, trace_parent=span)
            job, created = await asyncio.to_thread(self.store.submit, record)
        if created:
            self.new_job.set()
        return job, created

    async def get(self, job_id: str, tenant: str = "") -> JobRecord | None:
        """The job, if ``tenant`` owns it (another tenant's job reads as missing: ids do not leak)."""
        job = await asyncio.to_thread(self.store.get, job_id)
        return job if job is not None and self._sees(job, tenant) else None

    def _sees(self, job: JobRecord, tenant: str) -> bool:
        return self.api_keys is None or job.tenant == tenant

    async def list(self, status: JobStatus | None, limit: int, model: str | None, tenant: str = ""
                   ) -> list[JobRecord]:
        """Newest first, without payloads; only ``tenant``'s jobs when the server has API keys."""
        scope = None if self.api_keys is None else tenant
        return await asyncio.to_thread(self.store.list, status, limit, model, scope)

    async def cancel(self, job_id: str, tenant: str = "") -> JobRecord | None:
        # The owner never changes, so checking it before the (atomic) cancel is safe.
        if await self.get(job_id, tenant) is None:
            return None
        return await asyncio.to_thread(self.store.cancel, job_id)
