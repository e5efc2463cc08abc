"""Job workers: claim with a lease, run through the batcher at background priority, store the
outcome (fenced: a worker whose lease was taken over cannot overwrite the new holder's result).

    worker = JobWorker(lane)
    task = asyncio.create_task(worker.run())
    ...
    await worker.stop()      # stop claiming; finish the jobs in hand

A worker killed mid-job loses nothing: its lease expires and another worker runs the job again.

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

import orjson

from inferlane.core import codec
from inferlane.core.batcher import BACKGROUND
from inferlane.core.errors import InferlaneError, InvalidInput, QueueFull
from inferlane.core.retry import RetryPolicy, is_transient
from inferlane.core.uri import read_uri, write_uri
from inferlane.lanes.jobs.callbacks import deliver
from inferlane.lanes.jobs.lane import JobsLane
from inferlane.store.jobs import JobRecord, JobStatus

log = logging.getLogger(__name__)

QUEUE_FULL_BACKOFF = RetryPolicy(attempts=1_000_000, backoff_s=0.05, max_backoff_s=1.0)
"""The waits between tries of a job whose model queue is full, within one attempt (its deadline
bounds them, not ``attempts``)."""


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
        self._background: set[asyncio.Task[object]] = set()

    async def run(self) -> None:
        s = self.lane.settings
        slots = asyncio.Semaphore(max(1, s.workers))
        models = set(self.lane.registry.entries)
        housekeeping = asyncio.create_task(self._housekeeping())
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                if self._stopping.is_set():
                    slots.release()
                    break
                self.lane.new_job.clear()
                try:
                    job = await asyncio.to_thread(self.lane.store.claim, self.id, s.lease_s, time.time(), models,
                                                  ttl_s=s.ttl_s)
                except InferlaneError as e:  # the store is unreachable for now
                    log.warning("job store: %s", e.message)
                    job = None
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
                        # out and the job is run again; say so instead of "never retrieved".
                        log.error("job handler failed; the job will be re-run when its lease expires",
                                  exc_info=error)

                task.add_done_callback(done)
        finally:
            housekeeping.cancel()

    async def _wake(self) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        new = asyncio.ensure_future(self.lane.new_job.wait())
        try:
            await asyncio.wait({stop, new}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            new.cancel()

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop claiming; wait for the jobs in hand (their leases expire if this times out)."""
        self._stopping.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=grace_s)
        for t in self._background:
            t.cancel()

    async def _heartbeat(self, job: JobRecord) -> None:
        s = self.lane.settings
        while True:
            await asyncio.sleep(s.lease_s / 3)
            try:
                held = await asyncio.to_thread(self.lane.store.extend, job.id, self.id, s.lease_s, time.time())
            except InferlaneError as e:  # the store is unreachable for now: try again next beat
                log.warning("job %s: heartbeat failed: %s", job.id, e.message)
                continue
            if not held:
                log.warning("job %s: lease lost (another worker took it over)", job.id)
                return

    async def _handle(self, job: JobRecord) -> None:
        lane, s = self.lane, self.lane.settings
        labels = (job.model, job.version or "default", "jobs")
        lane.jobs_metrics.attempts.labels(*labels).inc()
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            result, output_uri, version = await self._run(job)
        except Exception as e:
            await self._failed(job, labels, e)
            return
        finally:
            beat.cancel()
        ok = await self._store_outcome(job, JobStatus.SUCCEEDED, lambda: lane.store.complete(
            job.id, self.id, result, output_uri, time.time(), s.ttl_s))
        if not ok:  # our lease was taken over; the other worker's outcome stands
            lane.jobs_metrics.outcomes.labels(*labels, "lost_lease").inc()
            log.warning("job %s: result discarded, the lease was taken over by another worker", job.id)
            return
        lane.jobs_metrics.outcomes.labels(*labels, "succeeded").inc()
        outcome: dict[str, object] = {"status": "succeeded", "model_version": version}
        if result is not None:
            outcome["result"] = orjson.loads(result)
        if output_uri is not None:
            outcome["output_uri"] = output_uri
        self._finished(job, labels, outcome)

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
            job.id, self.id, message, time.time(), retry_at, s.ttl_s))
        kind = "retry" if retry_at is not None else "failed"
        lane.jobs_metrics.outcomes.labels(*labels, kind).inc()
        log.info("job %s attempt %d of %d: %s (%s%s)", job.id, job.attempts, job.max_attempts, message, kind,
                 "" if transient else ", not retryable")
        if ok and retry_at is None:
            self._finished(job, labels, {"status": "failed", "error": message})

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
        return (now is not None and now.status is status and now.worker == self.id
                and now.attempts == job.attempts)

    async def _run(self, job: JobRecord) -> tuple[bytes | None, str | None, str]:
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
        mv = lane.registry.get(job.model, job.version)
        req = codec.parse_infer_request(body, None, mv.config.limits.max_elements_per_input)
        deadline = time.monotonic() + s.job_timeout_s
        retry = 0
        while True:
            try:
                pred = await mv.infer(req.inputs, deadline, priority=BACKGROUND)
                break
            except QueueFull:
                # A full model queue is back-pressure, not a failure: wait and try again within
                # this attempt rather than spending one of the job's attempts.
                retry += 1
                wait = QUEUE_FULL_BACKOFF.delay(retry)
                if time.monotonic() + wait >= deadline:
                    raise
                await asyncio.sleep(wait)
        out, _ = codec.encode_infer_response(mv.name, mv.version, pred.outputs,
                                             codec.InferRequest({}, req.id, req.parameters))
        if job.output_uri or len(out) > s.inline_result_max_bytes:
            uri = await asyncio.to_thread(write_uri, job.output_uri or s.results_uri, f"{job.id}.json", out,
                                          root=s.local_root, endpoint_url=s.endpoint_url)
            return None, uri, mv.version
        return out, None, mv.version

    def _finished(self, job: JobRecord, labels: tuple[str, str, str], outcome: dict[str, object]) -> None:
        lane, s = self.lane, self.lane.settings
        lane.jobs_metrics.latency.labels(*labels).observe(max(0.0, time.time() - job.created_at))
        if job.callback_url:
            body = orjson.dumps({"id": job.id, "model": job.model, "attempts": job.attempts, **outcome})
            task = asyncio.create_task(deliver(job.callback_url, body, s.callback_secret, policy=s.callback_policy(),
                                               allow_private=s.callback_allow_private))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

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
            except InferlaneError as e:
                log.warning("job store: %s", e.message)
            await asyncio.sleep(min(2.0, s.expire_interval_s))


__all__ = ["JobStatus", "JobWorker"]
