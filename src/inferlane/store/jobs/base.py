"""The job store contract: job states, the job record, and the protocol every backend implements.

    store = open_job_store("sqlite:///jobs.db")
    job, created = store.submit(JobRecord.new("fraud", request=body, now=time.time()))
    ...
    job = store.claim("host-1:pid:uuid", lease_s=30.0, now=time.time())   # a worker takes it
    store.complete(job.id, "host-1:pid:uuid", result=b'{"y": 1}', output_uri=None, now=time.time(), ttl_s=86400)

Times are Unix seconds (``time.time()``) passed in by the caller, never read inside a store, so
tests drive them by hand and every backend agrees on "now". Lifecycle::

    queued ──claim──▶ running ──complete──▶ succeeded ──expire──▶ expired
      ▲  │              │  ╰──fail (no retry left, or lease lost too often)──▶ failed ──expire──▶ expired
      │  ╰─cancel─▶ cancelled
      ╰──fail(retry_at)─╯   (and a running job whose lease ran out is claimed again)
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Protocol

import orjson

DEFAULT_TTL_S = 7 * 24 * 3600.0
"""How long a finished job keeps its result when a caller gives no TTL (claim's dead-letter path)."""


class JobStatus(StrEnum):
    """Where a job is in its life; the value is what the HTTP API and the stores write."""

    QUEUED = "queued"  # accepted and durable; waits until available_at for a worker
    RUNNING = "running"  # a worker holds its lease; when the lease runs out, another worker may take it
    SUCCEEDED = "succeeded"  # finished; the result (or output_uri) is kept until expires_at
    FAILED = "failed"  # dead letter: out of attempts (or not retryable); error says why
    CANCELLED = "cancelled"  # the caller cancelled it while it was still queued
    EXPIRED = "expired"  # its result TTL passed; only a tombstone without payloads is left

    @property
    def finished(self) -> bool:
        """True for states a job never leaves (except finished-with-result → expired)."""
        return self in _FINISHED


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class CallbackStatus(StrEnum):
    """Where a finished job's callback is; None on a job without callback_url or not finished yet."""

    PENDING = "pending"  # set in the same store write that finishes the job; a dispatcher will deliver it
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # the receiver refused it, or every retry failed; callback_error says why


def lost_lease_error(attempts: int, max_attempts: int, worker: str | None) -> str:
    """The dead-letter error of a job whose worker stopped heartbeating on its last attempt.

    Every backend writes exactly this text, so the message does not depend on the store.
    """
    return (f"lease expired on attempt {attempts} of {max_attempts}: worker {worker or '?'} stopped "
            "heartbeating (crashed, was killed or hung)")


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    """One job, as stored. Build new ones with :meth:`new`; stores return updated copies."""

    id: str
    """uuid4 hex."""
    model: str
    version: str | None = None
    """The model version asked for; None means whatever the router picks."""
    status: JobStatus = JobStatus.QUEUED
    request: bytes = b""
    """The JSON request body; empty when the input is at input_uri (and after expiry)."""
    input_uri: str | None = None
    idempotency_key: str | None = None
    """Unique per tenant and model: submitting the same key again returns the existing job."""
    tenant: str = ""
    """The API-key tenant that submitted the job ("" on a server without API keys); only it sees the job."""
    request_header_length: int | None = None
    """Length of the JSON header when ``request`` uses the binary tensor extension (lossless BYTES)."""
    callback_url: str | None = None
    callback_status: CallbackStatus | None = None
    callback_attempts: int = 0
    """HTTP deliveries tried so far, over every process that tried."""
    callback_error: str | None = None
    callback_at: float | None = None
    """While pending: not delivered before this time (a dispatcher holding it pushes it forward)."""
    attempts: int = 0
    """How many times a worker has claimed it."""
    max_attempts: int = 3
    error: str | None = None
    """The last failure (kept while a retry is queued)."""
    result: bytes | None = None
    """The JSON result; None when written to output_uri, before success, and after expiry."""
    output_uri: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    """When the latest attempt was claimed."""
    finished_at: float | None = None
    available_at: float
    """Not claimable before this time (retry backoff)."""
    lease_until: float | None = None
    """While running: the worker must heartbeat (extend) before this, or the job is re-delivered."""
    worker: str | None = None
    """The worker holding (or, once finished, last holding) the job."""
    expires_at: float | None = None
    """Result TTL deadline of a finished job."""
    trace_parent: str | None = None
    """W3C traceparent of the submit's span (with traces on, core/tracing.py): the job's run and its
    callback are recorded in the submitter's trace."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.attempts < 0:
            raise ValueError(f"attempts must not be negative, got {self.attempts}")

    @classmethod
    def new(
        cls,
        model: str,
        *,
        now: float,
        request: bytes = b"",
        version: str | None = None,
        input_uri: str | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        max_attempts: int = 3,
        tenant: str = "",
        request_header_length: int | None = None,
        output_uri: str | None = None,
        trace_parent: str | None = None,
    ) -> JobRecord:
        """A queued job with a fresh id, claimable from ``now``."""
        return cls(id=uuid.uuid4().hex, model=model, version=version, request=request, input_uri=input_uri,
                   idempotency_key=idempotency_key, callback_url=callback_url, max_attempts=max_attempts,
                   tenant=tenant, request_header_length=request_header_length, output_uri=output_uri,
                   created_at=now, updated_at=now, available_at=now, trace_parent=trace_parent)

    def to_public(self, *, with_result: bool = True) -> dict[str, Any]:
        """The job as the HTTP API shows it: no request bytes or lease internals; result decoded JSON
        (left out of listings, which never load payloads)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": self.status.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "error": self.error,
            "result": None if self.result is None else orjson.loads(self.result),
            "output_uri": self.output_uri,
            "input_uri": self.input_uri,
            "idempotency_key": self.idempotency_key,
            "tenant": self.tenant or None,
            "callback_url": self.callback_url,
            "callback": None if self.callback_status is None else {
                "status": self.callback_status.value, "attempts": self.callback_attempts,
                "error": self.callback_error},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "available_at": self.available_at,
            "expires_at": self.expires_at,
        }
        if not with_result:
            del doc["result"]
        return doc


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(JobRecord))
"""Stored fields, in declaration order (column order of the SQLite table, fields of a Redis hash)."""
SUMMARY_FIELDS: tuple[str, ...] = tuple(f for f in RECORD_FIELDS if f not in ("request", "result"))
"""What a listing reads: every field but the payloads (a listing of 1000 jobs never reads their bodies)."""


@dataclass(frozen=True, slots=True)
class ModelBacklog:
    """One model's share of the queue (the store queues by model, whatever the version asked)."""

    backlog: int
    running: int
    oldest_queued_age_s: float


@dataclass(frozen=True, slots=True)
class JobStats:
    """A snapshot for metrics and autoscaling (queue depth, lag)."""

    backlog: int
    """Queued jobs, including those waiting out a retry backoff."""
    running: int
    oldest_queued_age_s: float
    """How long the longest-claimable queued job has been claimable (``now - available_at``); 0 if none."""
    by_status: dict[JobStatus, int]
    """Count per status; every status present."""
    by_model: dict[str, ModelBacklog]
    """Per model with queued or running jobs: its backlog, running jobs and oldest claimable age."""


class JobStore(Protocol):
    """A durable job queue with leases. Sync and thread-safe: the lane calls it via ``asyncio.to_thread``.

    The ``worker`` of claim/extend/complete/fail is a lease token: unique per claim (a worker
    process adds a claim counter to its id), since fencing compares it.
    """

    def submit(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a queued job durably. If a job with the same (tenant, model, idempotency_key) or the
        same id exists, return it and False (atomically: never two jobs for one key); else the record and True."""
        ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def list(self, status: JobStatus | None = None, limit: int = 100, model: str | None = None,
             tenant: str | None = None) -> builtins.list[JobRecord]:
        """Newest first (by created_at), without payloads (``request`` empty, ``result`` None).
        ``tenant``: only that tenant's jobs (None: everyone's)."""
        ...

    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None:
        """Cancel a queued job; any other job comes back unchanged (the caller picks the HTTP status).
        ``now`` defaults to ``time.time()``."""
        ...

    def claim(self, worker: str, lease_s: float, now: float, models: set[str] | None = None, *,
              ttl_s: float = DEFAULT_TTL_S) -> JobRecord | None:
        """Atomically take the job claimable longest: queued with ``available_at <= now``, or running
        with ``lease_until < now`` (its worker died: re-delivery). Sets running, worker,
        ``lease_until = now + lease_s``, attempts + 1, started_at. A job whose lease ran out on its last
        attempt is dead-lettered instead (failed, kept ``ttl_s``), so a job that kills workers stops."""
        ...

    def extend(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        """Heartbeat: ``lease_until = now + lease_s``; False if ``worker`` no longer holds the job."""
        ...

    def complete(self, job_id: str, worker: str, result: bytes | None, output_uri: str | None, now: float,
                 ttl_s: float) -> bool:
        """Succeed the job, only while it is running and held by ``worker`` (fencing); else change
        nothing and return False. The result is kept until ``now + ttl_s``. A job with a callback_url
        gets ``callback_status`` pending (due now) in the same write."""
        ...

    def fail(self, job_id: str, worker: str, error: str, now: float, retry_at: float | None, ttl_s: float) -> bool:
        """Fenced like complete. With ``retry_at`` and attempts left: queued again from ``retry_at``
        (error kept). Else: failed (dead letter) with the error, kept until ``now + ttl_s``, and its
        callback (if any) pending, in the same write."""
        ...

    def claim_callbacks(self, now: float, hold_s: float, limit: int) -> builtins.list[JobRecord]:
        """Take up to ``limit`` pending callbacks due at ``now`` (``callback_at <= now``), oldest due
        first, and push their ``callback_at`` to ``now + hold_s`` so that no other dispatcher takes them
        meanwhile (a dispatcher that dies leaves them due again after ``hold_s``)."""
        ...

    def record_callback(self, job_id: str, status: CallbackStatus, attempts: int, error: str | None,
                        now: float) -> bool:
        """Store a delivery's outcome while the callback is pending: ``attempts`` more tries, and
        ``status`` (PENDING gives it back, due at ``now``). False when it was not pending."""
        ...

    def expire(self, now: float) -> int:
        """Finished jobs with ``expires_at < now`` lose their payloads and become expired tombstones."""
        ...

    def stats(self, now: float) -> JobStats: ...

    def close(self) -> None: ...
