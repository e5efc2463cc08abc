"""A standalone job worker process: load the models, run jobs from a store until SIGTERM.

    code = run_worker(Path("models"), "redis://10.0.0.5:6379/0", JobsSettings(workers=4), metrics_port=9110)

It serves no HTTP but Prometheus metrics (``metrics_port``, on loopback by default). On SIGTERM or
SIGINT it stops claiming, lets the jobs in hand finish (up to ``graceful_timeout_s``) and returns
0; a job it could not finish runs again elsewhere once its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

from inferlane.core.metrics import Metrics
from inferlane.core.urls import redact
from inferlane.lanes.jobs.lane import JobsLane, JobsSettings, check_store
from inferlane.lanes.jobs.worker import JobWorker
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.jobs import open_job_store


def run_worker(repository: Path, store_url: str, settings: JobsSettings, *, metrics_port: int | None = None,
               metrics_host: str = "127.0.0.1", graceful_timeout_s: float = 30.0) -> int:
    """Run jobs for every model in ``repository`` until SIGTERM/SIGINT; the exit code (0).

    Raises ConfigError, before any model loads, for a metrics port that cannot be bound, a bad
    repository or store URL; and for a model that fails to load."""
    metrics = Metrics()
    stop_metrics = metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
    try:
        registry = ModelRegistry.from_repository(repository, observer_factory=metrics.batch_observer)
        metrics.watch_queues(registry.queue_states)
        store = open_job_store(store_url)
        try:
            check_store(store, store_url)
            asyncio.run(_work(JobsLane(registry, store, settings, metrics), store_url, graceful_timeout_s))
        finally:
            store.close()
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


async def _work(lane: JobsLane, store_url: str, graceful_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # from the start: a SIGTERM while models load is a clean stop
        loop.add_signal_handler(sig, stop.set)
    worker = JobWorker(lane)
    try:
        await lane.registry.load_all()
        if stop.is_set():
            return
        run = asyncio.create_task(worker.run())
        models = sorted(lane.registry.entries)
        print(f"worker {worker.id} ready: models {models}, store {redact(store_url)}", flush=True)
        await stop.wait()
        await worker.stop(graceful_timeout_s)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    finally:
        await lane.registry.close()


__all__ = ["run_worker"]
