"""Job workers: claim with a lease, run through the batcher at background priority, store the
outcome (fenced: a worker whose lease was taken over cannot overwrite the new holder's result).

    worker = JobWorker(lane)
    task = asyncio.create_task(worker.run())
    ...
    await worker.stop()      # stop claiming; finish the jobs in hand

A worker killed mid-job loses nothing: its lease expires and another worker runs the job again.
Each claim carries a lease token of its own (the worker id and a claim counter), so a slot of this
very process that lost its lease cannot store an outcome over the next claim's.

The loop never dies of a store error (a full disk, a read-only replica after a failover): it backs
off and tries again, and meanwhile ``lane.worker_problem`` says why (``/v2/health/ready`` answers
503 with it) and the ``inferlane_jobs_worker_healthy`` gauge reads 0.

Callbacks are a persistent queue in the store: finishing a job marks its callback pending in the
same write, and a dispatcher here delivers pending callbacks, this process's and those left by a
process that stopped, at most ``callback_concurrency`` at once, and records each outcome.

What a failed attempt leads to is the one retry rule, :func:`inferlane.core.retry.is_transient`:
a transient error (a full queue past the attempt's deadline, a model not ready, a deadline, a
store or network error) queues the job again after the policy's backoff while it has attempts
left; anything else (invalid input, a model error, a missing input_uri) dead-letters the job at
once, since the same input would fail the same way again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from inferlane.core import codec, tracing
from inferlane.core.batcher import BACKGROUND, Prediction
from inferlane.core.errors import InferlaneError, InvalidInput, QueueFull
from inferlane.core.retry import RetryPolicy, is_transient
from inferlane.core.uri import read_uri, write_uri
from inferlane.lanes.jobs.callbacks import deliver
from inferlane.lanes.jobs.lane import JobsLane, JobsSettings
from inferlane.store.jobs import JobRecord, JobStatus
from inferlane.store.jobs.base import CallbackStatus

log = logging.getLogger(__name__)

QUEUE_FULL_BACKOFF = RetryPolicy(attempts=1_000_000, backoff_s=0.05, max_backoff_s=1.0)
"""The waits between tries of a job whose model queue is full, within one attempt (its deadline
bounds them, not ``attempts``)."""
STORE_BACKOFF = RetryPolicy(attempts=1_000_000, backoff_s=0.1, max_backoff_s=5.0)
"""The waits between tries of a store that keeps failing (the worker never gives up on it)."""


class _Ran(NamedTuple):
    """A job's successful run: its result (inline or at ``output_uri``), the version that answered, its
    prediction's timings and when the answer came (wall-clock ns)."""

    result: bytes | None
    output_uri: str | None
    version: str
    prediction: Prediction
    answered_ns: int


def _trace_job(job: JobRecord, ran: _Ran | None, error: str | None) -> None:
    """The job's attempt as a span of its submitter's trace (traces on): the wait in the store's queue,
    then the batcher's queue and the forward pass."""
    if not tracing.on():
        return
    now = time.time_ns()
    created, started = int(job.created_at * 1e9), int((job.started_at or job.created_at) * 1e9)
    phases = [("job queue", created, started)]
    attributes: dict[str, object] = {"inferlane.model": job.model, "inferlane.lane": "jobs",
                                     "inferlane.job_id": job.id, "inferlane.attempt": job.attempts}
    if ran is not None:
        p = ran.prediction
        forward_start = ran.answered_ns - int(p.forward_s * 1e9)
        phases += [("queue", forward_start - int(p.queue_s * 1e9), forward_start), ("forward", forward_start,
                                                                                   ran.answered_ns)]
        attributes.update({"inferlane.version": ran.version, "inferlane.batch_rows": p.batch_rows})
    tracing.record(f"job {job.model}", parent=job.trace_parent, start_ns=created, end_ns=now, attributes=attributes,
                   phases=phases, error=error, kind="consumer")


def _error_text(e: BaseException) -> str:
    return e.message if isinstance(e, InferlaneError) else f"{type(e).__name__}: {e}"


def callback_body(job: JobRecord) -> bytes:
    """What a finished job's callback says: its outcome, built from the stored record alone."""
    doc: dict[str, Any] = {"id": job.id, "model": job.model, "attempts": job.attempts, "status": job.status.value}
    if job.status is JobStatus.SUCCEEDED:
        if job.result is not None:
            result = orjson.loads(job.result)
            if isinstance(result, dict) and "model_version" in result:
                doc["model_version"] = result["model_version"]
            doc["result"] = result
        if job.output_uri is not None:
            doc["output_uri"] = job.output_uri
    else:
        doc["error"] = job.error
    return orjson.dumps(doc)


def _results_target(s: JobsSettings, job: JobRecord) -> tuple[str, Path | None]:
    """Where a result not kept inline goes: the job's output_uri (under the local root), or the
    server's own results folder, which is allowed by being the operator's choice."""
    if job.output_uri:
        return job.output_uri, s.local_root
    if s.results_uri.startswith("s3://"):
        return s.results_uri, None
    return ".", Path(s.results_uri)


class JobWorker:
    def __init__(self, lane: JobsLane, worker_id: str | None = None) -> None:
        self.lane = lane
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Storing an outcome outlives a short store outage, but gives up while the lease (renewed at
        # most a third of a lease ago) still holds; the job then runs again when it expires.
        self._outcome_policy = RetryPolicy(attempts=10, backoff_s=0.1, max_backoff_s=2.0,
                                           give_up_after_s=lane.settings.lease_s / 2)
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._callback_due = asyncio.Event()
        self._claims = 0
        self._failures = 0

    def _store_failed(self, e: BaseException) -> None:
        """The claim loop's store call failed: report it (readiness, gauge), log the first of a run."""
        self._failures += 1
        problem = f"the job worker cannot use the job store: {_error_text(e)}"
        if self._failures == 1:
            log.error("%s; retrying with backoff", problem, exc_info=None if isinstance(e, InferlaneError) else e)
        self.lane.worker_problem = problem
        self.lane.jobs_metrics.set_worker_healthy(False)

    def _store_ok(self) -> None:
        if self._failures:
            log.warning("the job worker can use the job store again (after %d failed tries)", self._failures)
            self._failures = 0
        self.lane.worker_problem = None
        self.lane.jobs_metrics.set_worker_healthy(True)

    async def run(self) -> None:
        try:
            await self._run_loop()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a bug, not a store error: say so where readiness and metrics look
            self.lane.worker_problem = f"the job worker stopped: {_error_text(e)}"
            self.lane.jobs_metrics.set_worker_healthy(False)
            log.error("the job worker stopped", exc_info=e)
            raise
        if not self._stopping.is_set():  # pragma: no cover - the loop only ends when stopping
            self.lane.worker_problem = "the job worker stopped"

    async def _run_loop(self) -> None:
        s = self.lane.settings
        slots = asyncio.Semaphore(max(1, s.workers))
        models = set(self.lane.registry.entries)
        self.lane.jobs_metrics.set_worker_healthy(True)
        background = [asyncio.create_task(self._housekeeping()), asyncio.create_task(self._callbacks())]
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                if self._stopping.is_set():
                    slots.release()
                    break
                self.lane.new_job.clear()
                self._claims += 1
                token = f"{self.id}#{self._claims}"  # fencing compares it: unique per claim
                try:
                    job = await asyncio.to_thread(self.lane.store.claim, token, s.lease_s, time.time(), models,
                                                  ttl_s=s.ttl_s)
                except Exception as e:  # unreachable, read-only, disk full: back off, never die
                    slots.release()
                    self._store_failed(e)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), STORE_BACKOFF.delay(self._failures))
                    continue
                self._store_ok()
                if job is None:
                    slots.release()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake(), s.poll_interval_s)
                    continue
                task = asyncio.create_task(self._handle(job))
                self._tasks.add(task)

                def done(t: asyncio.Task[None]) -> None:
                    self._tasks.discard(t)
                    slots.release()
                    if not t.cancelled() and (error := t.exception()) is not None:
                        # e.g. the store was unreachable when storing the outcome: the lease runs
                        # out and the job is run again; say so instead of "never retrieved". A store
                        # outage is one line (its message says it all); anything else is a bug.
                        why = error.message if isinstance(error, InferlaneError) else None
                        log.error("job handler failed; the job will be re-run when its lease expires%s",
                                  f": {why}" if why else "", exc_info=None if why else error)

                task.add_done_callback(done)
        finally:
            for t in background:
                t.cancel()

    async def _wake(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        new = asyncio.ensure_future(self.lane.new_job.wait())
        try:
            await asyncio.wait({stop, new}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            new.cancel()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop claiming; wait for the jobs in hand (their leases expire if this times out); give
        the callbacks being delivered back to the store (still pending) for the next process."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        deliveries = set(self._deliveries)
        for t in deliveries:
            t.cancel()
        if deliveries:
            await asyncio.wait(deliveries, timeout=5.0)

    async def _heartbeat(self, job: JobRecord) -> None:
        s = self.lane.settings
        while True:
            await asyncio.sleep(s.lease_s / 3)
            try:
                held = await asyncio.to_thread(self.lane.store.extend, job.id, self._token(job), s.lease_s,
                                               time.time())
            except Exception as e:  # the store is failing for now: try again next beat
                log.warning("job %s: heartbeat failed: %s", job.id, _error_text(e))
                continue
            if not held:
                log.warning("job %s: lease lost (another worker took it over)", job.id)
                return

    @staticmethod
    def _token(job: JobRecord) -> str:
        assert job.worker is not None  # a claimed job carries the claim's lease token
        return job.worker

    async def _handle(self, job: JobRecord) -> None:
        lane, s = self.lane, self.lane.settings
        labels = (job.model, job.version or "default", "jobs")
        lane.jobs_metrics.attempts.labels(*labels).inc()
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            ran = await self._run(job)
        except Exception as e:
            _trace_job(job, None, str(e.message if isinstance(e, InferlaneError) else e))
            await self._failed(job, labels, e)
            return
        finally:
            beat.cancel()
        _trace_job(job, ran, None)
        result, output_uri = ran.result, ran.output_uri
        ok = await self._store_outcome(job, JobStatus.SUCCEEDED, lambda: lane.store.complete(
            job.id, self._token(job), result, output_uri, time.time(), s.ttl_s))
        if not ok:  # our lease was taken over; the other worker's outcome stands
            lane.jobs_metrics.outcomes.labels(*labels, "lost_lease").inc()
            log.warning("job %s: result discarded, the lease was taken over by another worker", job.id)
            return
        lane.jobs_metrics.outcomes.labels(*labels, "succeeded").inc()
        self._finished(job, labels)

    async def _failed(self, job: JobRecord, labels: tuple[str, str, str], error: Exception) -> None:
        """Queue the job again after the policy's backoff when the error is transient and attempts
        are left; else dead-letter it (failed, with the error) at once."""
        lane, s = self.lane, self.lane.settings
        transient = is_transient(error)
        if isinstance(error, InferlaneError):
            message = error.message
        else:
            message = f"{type(error).__name__}: {error}"
            if not transient:  # not an error inferlane raises on purpose: show where it came from
                log.error("job %s failed unexpectedly", job.id, exc_info=error)
        retry_at = None
        if transient and job.attempts < job.max_attempts:
            retry_at = time.time() + s.retry_policy().delay(job.attempts)
        ok = await self._store_outcome(job, None if retry_at is not None else JobStatus.FAILED, lambda: lane.store.fail(
            job.id, self._token(job), message, time.time(), retry_at, s.ttl_s))
        kind = "retry" if retry_at is not None else "failed"
        lane.jobs_metrics.outcomes.labels(*labels, kind).inc()
        log.info("job %s attempt %d of %d: %s (%s%s)", job.id, job.attempts, job.max_attempts, message, kind,
                 "" if transient else ", not retryable")
        if ok and retry_at is None:
            self._finished(job, labels)

    async def _store_outcome(self, job: JobRecord, status: JobStatus | None, call: Callable[[], bool]) -> bool:
        """Run the fenced store ``call`` (complete or fail), retrying transient store errors.

        When a retried call answers False, an earlier try may have landed with its reply lost: the
        stored record then shows ``status`` from this worker's attempt, and that counts as stored."""
        retried = False

        def on_retry(retry: int, error: BaseException, delay: float) -> None:
            nonlocal retried
            retried = True

        ok = await self._outcome_policy.acall(lambda: asyncio.to_thread(call), on_retry=on_retry,
                                              what=f"job {job.id}: storing the outcome")
        if ok or not retried or status is None:
            return ok
        now = await asyncio.to_thread(self.lane.store.get, job.id)
        return (now is not None and now.status is status and now.worker == job.worker
                and now.attempts == job.attempts)

    async def _run(self, job: JobRecord) -> _Ran:
        lane, s = self.lane, self.lane.settings
        body = job.request
        if job.input_uri:
            try:
                body = await asyncio.to_thread(read_uri, job.input_uri, root=s.local_root,
                                               max_bytes=s.max_request_bytes, endpoint_url=s.endpoint_url)
            except FileNotFoundError as e:
                raise InvalidInput(f"input_uri {job.input_uri!r} not found") from e
            except PermissionError as e:
                raise InvalidInput(f"input_uri {job.input_uri!r} refused: {e.strerror or e}") from e
        # Unpinned: the router's choice, sticky per job (a retried attempt lands on the same side).
        mv = lane.registry.get(job.model, job.version, key=job.id)
        header_length = job.request_header_length if not job.input_uri else None
        req = codec.parse_infer_request(body, header_length, mv.config.limits.max_elements_per_input)
        deadline = time.monotonic() + s.job_timeout_s
        retry = 0
        lane.registry.enter(mv)  # unloading the version waits for this job's forward pass
        try:
            while True:
                try:
                    pred = await mv.infer(req.inputs, deadline, priority=BACKGROUND)
                    answered_ns = time.time_ns()
                    break
                except QueueFull:
                    # A full model queue is back-pressure, not a failure: wait and try again within
                    # this attempt rather than spending one of the job's attempts.
                    retry += 1
                    wait = QUEUE_FULL_BACKOFF.delay(retry)
                    if time.monotonic() + wait >= deadline:
                        raise
                    await asyncio.sleep(wait)
        finally:
            lane.registry.leave(mv)
        out, _ = codec.encode_infer_response(mv.name, mv.version, pred.outputs,
                                             codec.InferRequest({}, req.id, req.parameters))
        if job.output_uri or len(out) > s.inline_result_max_bytes:
            prefix, root = _results_target(s, job)
            uri = await asyncio.to_thread(write_uri, prefix, f"{job.id}.json", out, root=root,
                                          endpoint_url=s.endpoint_url)
            return _Ran(None, uri, mv.version, pred, answered_ns)
        return _Ran(out, None, mv.version, pred, answered_ns)

    def _finished(self, job: JobRecord, labels: tuple[str, str, str]) -> None:
        self.lane.jobs_metrics.latency.labels(*labels).observe(max(0.0, time.time() - job.created_at))
        if job.callback_url:
            self._callback_due.set()  # its callback is pending in the store: deliver it now

    async def _callbacks(self) -> None:
        """Deliver pending callbacks (this process's, and any other's that are due), at most
        ``callback_concurrency`` at once; woken by a local finish, else every few polls."""
        s, store = self.lane.settings, self.lane.store
        capacity = max(1, s.callback_concurrency)
        failures = 0
        while True:
            self._callback_due.clear()
            free = capacity - len(self._deliveries)
            jobs: list[JobRecord] = []
            if free > 0:
                try:
                    jobs = await asyncio.to_thread(store.claim_callbacks, time.time(), s.callback_hold_s, free)
                    failures = 0
                except Exception as e:
                    failures += 1
                    if failures == 1:
                        log.warning("callbacks: the job store: %s", _error_text(e))
                    await asyncio.sleep(STORE_BACKOFF.delay(failures))
                    continue
            for job in jobs:
                task = asyncio.create_task(self._deliver(job))
                self._deliveries.add(task)

                def done(t: asyncio.Task[None]) -> None:
                    self._deliveries.discard(t)
                    self._callback_due.set()  # a slot is free again
                    if not t.cancelled() and (error := t.exception()) is not None:
                        log.error("callback dispatch failed; it is delivered again later", exc_info=error)

                task.add_done_callback(done)
            if jobs and len(jobs) == free:
                continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._callback_due.wait(), max(1.0, 4 * s.poll_interval_s))

    async def _deliver(self, job: JobRecord) -> None:
        s, store = self.lane.settings, self.lane.store
        assert job.callback_url is not None  # only jobs with a callback_url are ever pending
        try:
            with tracing.live_span(f"callback of job {job.model}", parent=job.trace_parent,
                                   attributes={"inferlane.model": job.model, "inferlane.lane": "jobs",
                                               "inferlane.job_id": job.id}) as (span, outcome):
                d = await deliver(job.callback_url, callback_body(job), s.callback_secret, job_id=job.id,
                                  policy=s.callback_policy(), allow_private=s.callback_allow_private,
                                  headers={tracing.TRACEPARENT: span} if span else None)
                if not d.delivered:
                    outcome["error"] = d.error or "not delivered"
        except asyncio.CancelledError:
            # Stopping: give it back, due now, so that the next process delivers it at once.
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.to_thread(store.record_callback, job.id, CallbackStatus.PENDING, 0,
                                                       None, time.time()))
            raise
        status = CallbackStatus.DELIVERED if d.delivered else CallbackStatus.FAILED
        await self._outcome_policy.acall(
            lambda: asyncio.to_thread(store.record_callback, job.id, status, d.attempts, d.error, time.time()),
            what=f"job {job.id}: storing the callback's outcome")

    async def _housekeeping(self) -> None:
        """Expire old results and publish the backlog gauges (what an autoscaler scales on)."""
        s = self.lane.settings
        last_expire = 0.0
        while True:
            now = time.time()
            try:
                if now - last_expire >= s.expire_interval_s:
                    await asyncio.to_thread(self.lane.store.expire, now)
                    last_expire = now
                self.lane.jobs_metrics.publish(await asyncio.to_thread(self.lane.store.stats, now))
            except Exception as e:  # the claim loop reports a failing store; this only logs
                log.warning("job store: %s", _error_text(e))
            await asyncio.sleep(min(2.0, s.expire_interval_s))


__all__ = ["JobStatus", "JobWorker"]
