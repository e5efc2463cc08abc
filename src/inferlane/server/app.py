"""Composition root: builds the registry, lanes and transports from settings, and runs them.

    app = create_app(ServerSettings(model_repository=Path("models")))
    run(settings)            # uvicorn with uvloop + httptools; SIGTERM drains then exits 0
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette

from inferlane.core.metrics import Metrics
from inferlane.core.process import tune_gc
from inferlane.lanes.jobs import JobsLane, JobWorker
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.server.settings import ServerSettings
from inferlane.store.jobs import open_job_store
from inferlane.transport.http.app import FastInferApp, build_http_app

log = logging.getLogger("inferlane.server")


def create_app(settings: ServerSettings) -> FastInferApp:
    """The ASGI app. Models load in the background after start-up: the server is live at once
    and ready (``/v2/health/ready``) only once every version has loaded and warmed up."""
    metrics = Metrics()
    registry = ModelRegistry.from_repository(settings.model_repository,
                                             observer_factory=metrics.batch_observer)
    metrics.watch_queues(registry.queue_states)
    lane = OnlineLane(registry, metrics)
    store = open_job_store(settings.jobs_store)
    jobs = JobsLane(registry, store, settings.jobs_settings(), metrics)
    worker = JobWorker(jobs) if settings.jobs_workers > 0 else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def load_then_work() -> None:
            try:
                await registry.load_all()
            except Exception:  # logged, kept in registry.load_error; readiness stays false
                return
            tune_gc()
            if worker is not None:
                await worker.run()

        background = asyncio.get_running_loop().create_task(load_then_work())
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop(settings.graceful_timeout_s)
            background.cancel()
            await registry.close()
            store.close()

    app = build_http_app(lane, lifespan, body_timeout_s=settings.body_timeout_s, jobs=jobs)
    app.state.registry = registry
    app.state.metrics = metrics
    return app


def app_from_env() -> FastInferApp:
    """Factory for uvicorn worker processes (``--workers N``): settings come from INFERLANE_*."""
    return create_app(ServerSettings.from_env())


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def run(settings: ServerSettings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, finishes in-flight requests, exits 0."""
    # NOTE: uvicorn captures SIGTERM while serving, drains, then re-raises it with the previous
    # handler restored; this handler turns that re-raise into a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {
        "host": settings.host, "port": settings.port, "loop": "uvloop", "http": "httptools",
        "access_log": False, "log_level": settings.log_level, "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "server_header": False,
        "interface": "asgi3",  # FastInferApp.__call__ returns an awaitable without being a coroutine itself
        # X-Forwarded-* rewriting is for deployments behind a proxy; it costs time on every request.
        "proxy_headers": False,
    }
    if settings.workers > 1:
        import os

        os.environ.update(settings.to_env())
        uvicorn.run("inferlane.server.app:app_from_env", factory=True, workers=settings.workers,
                    **common)  # type: ignore[arg-type]
        return
    app = create_app(settings)
    uvicorn.run(app, **common)  # type: ignore[arg-type]
