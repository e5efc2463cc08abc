"""Job workers: claim with a lease, run through the batcher at background priority, store the
outcome (fenced: a worker whose lease was taken over cannot overwrite the new holder's result).

    worker = JobWorker(lane)
    task = asyncio.create_task(worker.run())
    ...
    await worker.stop()      # stop claiming; finish the jobs in hand

A worker killed mid-job loses nothing: its lease expires and another worker runs the job again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid

import orjson

from inferlane.core import codec
from inferlane.core.batcher import BACKGROUND
from inferlane.core.errors import (
    ConfigError,
    InferlaneError,
    InvalidInput,
    ModelNotFound,
    PayloadTooLarge,
    QueueFull,
)
from inferlane.core.uri import read_uri, write_uri
from inferlane.lanes.jobs.callbacks import deliver
from inferlane.lanes.jobs.lane import JobsLane
from inferlane.store.jobs import JobRecord, JobStatus

log = logging.getLogger(__name__)

# Retrying cannot fix these: the job fails at once (no further attempts).
PERMANENT = (InvalidInput, PayloadTooLarge, ModelNotFound, ConfigError)


class _Permanent(Exception):
    pass


class JobWorker:
    def __init__(self, lane: JobsLane, worker_id: str | None = None) -> None:
        self.lane = lane
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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
        lane.metrics.job_attempts.labels(*labels).inc()
        beat = asyncio.create_task(self._heartbeat(job))
        try:
            result, output_uri, version = await self._run(job)
        except Exception as e:
            permanent = isinstance(e, (_Permanent, *PERMANENT))
            message = e.message if isinstance(e, InferlaneError) else str(e)
            if not isinstance(e, InferlaneError | _Permanent):
                log.exception("job %s failed unexpectedly", job.id)
                message = f"{type(e).__name__}: {e}"
            retry_at = None
            if not permanent and job.attempts < job.max_attempts:
                retry_at = time.time() + s.retry_backoff_s * (2 ** (job.attempts - 1)) * (0.5 + random.random())
            ok = await asyncio.to_thread(lane.store.fail, job.id, self.id, message, time.time(), retry_at, s.ttl_s)
            kind = "retry" if retry_at is not None else "failed"
            lane.metrics.job_outcomes.labels(*labels, kind).inc()
            log.info("job %s attempt %d: %s (%s)", job.id, job.attempts, message, kind)
            if ok and retry_at is None:
                self._finished(job, labels, {"status": "failed", "error": message})
            return
        finally:
            beat.cancel()
        ok = await asyncio.to_thread(lane.store.complete, job.id, self.id, result, output_uri, time.time(), s.ttl_s)
        if not ok:  # our lease was taken over; the other worker's outcome stands
            lane.metrics.job_outcomes.labels(*labels, "lost_lease").inc()
            log.warning("job %s: result discarded, the lease was taken over by another worker", job.id)
            return
        lane.metrics.job_outcomes.labels(*labels, "succeeded").inc()
        outcome: dict[str, object] = {"status": "succeeded", "model_version": version}
        if result is not None:
            outcome["result"] = orjson.loads(result)
        if output_uri is not None:
            outcome["output_uri"] = output_uri
        self._finished(job, labels, outcome)

    async def _run(self, job: JobRecord) -> tuple[bytes | None, str | None, str]:
        lane, s = self.lane, self.lane.settings
        body = job.request
        if job.input_uri:
            try:
                body = await asyncio.to_thread(read_uri, job.input_uri, root=s.local_root,
                                               max_bytes=s.max_request_bytes, endpoint_url=s.endpoint_url)
            except FileNotFoundError as e:
                raise _Permanent(f"input_uri {job.input_uri!r} not found") from e
        mv = lane.registry.get(job.model, job.version)
        req = codec.parse_infer_request(body, None, mv.config.limits.max_elements_per_input)
        deadline = time.monotonic() + s.job_timeout_s
        while True:
            try:
                pred = await mv.infer(req.inputs, deadline, priority=BACKGROUND)
                break
            except QueueFull as e:
                # A full model queue is back-pressure, not a failure: wait and try again within
                # this attempt rather than spending one of the job's attempts.
                if time.monotonic() + e.retry_after >= deadline:
                    raise
                await asyncio.sleep(min(e.retry_after, 1.0))
        out, _ = codec.encode_infer_response(mv.name, mv.version, pred.outputs,
                                             codec.InferRequest({}, req.id, req.parameters))
        if job.output_uri or len(out) > s.inline_result_max_bytes:
            uri = await asyncio.to_thread(write_uri, job.output_uri or s.results_uri, f"{job.id}.json", out,
                                          root=s.local_root, endpoint_url=s.endpoint_url)
            return None, uri, mv.version
        return out, None, mv.version

    def _finished(self, job: JobRecord, labels: tuple[str, str, str], outcome: dict[str, object]) -> None:
        lane, s = self.lane, self.lane.settings
        lane.metrics.job_latency.labels(*labels).observe(max(0.0, time.time() - job.created_at))
        if job.callback_url:
            body = orjson.dumps({"id": job.id, "model": job.model, "attempts": job.attempts, **outcome})
            task = asyncio.create_task(deliver(job.callback_url, body, s.callback_secret, retries=s.callback_retries,
                                               backoff_s=s.callback_backoff_s, allow_private=s.callback_allow_private))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _housekeeping(self) -> None:
        """Expire old results and publish the backlog gauges (what an autoscaler scales on)."""
        m, s = self.lane.metrics, self.lane.settings
        last_expire = 0.0
        while True:
            now = time.time()
            try:
                if now - last_expire >= s.expire_interval_s:
                    await asyncio.to_thread(self.lane.store.expire, now)
                    last_expire = now
                stats = await asyncio.to_thread(self.lane.store.stats, now)
                m.jobs_backlog.labels("jobs").set(stats.backlog)
                m.jobs_running.labels("jobs").set(stats.running)
                m.jobs_oldest_age.labels("jobs").set(stats.oldest_queued_age_s)
            except InferlaneError as e:
                log.warning("job store: %s", e.message)
            await asyncio.sleep(min(2.0, s.expire_interval_s))


__all__ = ["JobStatus", "JobWorker"]
