"""The jobs lane: durable asynchronous inference with leases, retries and callbacks."""

from inferlane.lanes.jobs.lane import JobsLane, JobsSettings
from inferlane.lanes.jobs.standalone import run_worker
from inferlane.lanes.jobs.worker import JobWorker

__all__ = ["JobWorker", "JobsLane", "JobsSettings", "run_worker"]
