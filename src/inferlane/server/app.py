"""Composition root: builds the registry, lanes and transports from settings, and runs them.

    app = create_app(ServerSettings(model_repository=Path("models")))
    run(settings)            # uvicorn with uvloop + httptools (transport/http/protocol.py); SIGTERM drains, exits 0
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.supervisors.multiprocess import Multiprocess

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.core.process import tune_gc
from inferlane.lanes.jobs import JobsLane, JobWorker
from inferlane.lanes.jobs.access import ApiKeys, check_open_access
from inferlane.lanes.jobs.lane import check_store
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.controller import RolloutController
from inferlane.rollout.drift import DriftMonitor
from inferlane.rollout.registry import ModelRegistry
from inferlane.server.settings import ServerSettings
from inferlane.server.watch import RepositoryWatcher
from inferlane.store.jobs import open_job_store
from inferlane.store.rollout import open_rollout_store
from inferlane.transport.http.admin import AdminToken, admin_routes
from inferlane.transport.http.app import FastInferApp, build_http_app
from inferlane.transport.http.body import loopback_hosts
from inferlane.transport.http.protocol import ConnectionLimits, GuardedConfig

log = logging.getLogger("inferlane.server")


def create_app(settings: ServerSettings) -> FastInferApp:
    """The ASGI app. Models load in the background after start-up: the server is live at once
    and ready (``/v2/health/ready``) only once every version has loaded and warmed up."""
    metrics = Metrics()
    registry = ModelRegistry.from_repository(settings.model_repository,
                                             observer_factory=metrics.batch_observer)
    metrics.watch_queues(registry.queue_states)
    drift = DriftMonitor(registry, metrics)  # a bad drift.reference_file stops the start here, in one line
    lane = OnlineLane(registry, metrics)
    api_keys = ApiKeys.parse(settings.api_keys) if settings.api_keys else None
    check_open_access(api_keys, settings.host, settings.jobs_open)
    store = open_job_store(settings.jobs_store)
    check_store(store, settings.jobs_store)
    jobs = JobsLane(registry, store, settings.jobs_settings(), metrics, api_keys=api_keys)
    worker = JobWorker(jobs) if settings.jobs_workers > 0 else None
    rollout_store = open_rollout_store(settings.rollout_store)
    controller = RolloutController(registry, rollout_store, metrics)
    watcher = RepositoryWatcher(registry) if settings.watch else None
    admin = None
    if settings.admin_token:
        admin = admin_routes(registry, controller, AdminToken(settings.admin_token), settings.body_timeout_s,
                             drift)
        log.info("admin API on at /v2/admin (bearer token INFERLANE_ADMIN_TOKEN)")
    else:
        log.info("admin API off: set INFERLANE_ADMIN_TOKEN to turn on /v2/admin (hot load, rollouts)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []

        async def load_then_work() -> None:
            try:
                await registry.load_all()
            except Exception:  # logged, kept in registry.load_error; readiness stays false
                return
            try:  # a restart mid-rollout goes on at the stored step
                await controller.resume()
            except Exception:
                log.exception("could not resume the stored rollouts from %s; serving the default versions",
                              settings.rollout_store)
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(_logged(controller.run, "the rollout controller")))
            tasks.append(loop.create_task(_logged(drift.run, "the drift monitor")))
            if watcher is not None:
                tasks.append(loop.create_task(_logged(functools.partial(watcher.run, settings.watch_interval_s),
                                                         "the repository watch")))
            tune_gc()
            if worker is not None:
                await worker.run()

        background = asyncio.get_running_loop().create_task(load_then_work())
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop(settings.graceful_timeout_s)
            for task in [background, *tasks]:
                task.cancel()
            await asyncio.gather(background, *tasks, return_exceptions=True)
            await controller.close()
            await registry.close()
            store.close()
            rollout_store.close()

    app = build_http_app(lane, lifespan, body_timeout_s=settings.body_timeout_s, jobs=jobs,
                         hosts=loopback_hosts(settings.host), admin=admin)
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.rollouts = controller
    app.state.drift = drift
    return app


async def _logged(work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run a background loop; a crash is logged (the server keeps serving) instead of vanishing with its task."""
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s stopped on an unexpected error", what)


def app_from_env() -> FastInferApp:
    """Factory for uvicorn worker processes (``--workers N``): settings come from INFERLANE_*."""
    return create_app(ServerSettings.from_env())


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything loads: a port in use is one clear line (exit 2),
    not a traceback after start-up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                          "(choose another with --port / INFERLANE_PORT, or --host / INFERLANE_HOST)") from None
    sock.set_inheritable(True)  # --workers N: the worker processes share it
    return sock


def connection_limits(settings: ServerSettings) -> ConnectionLimits:
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes, max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections, drain_max_bytes=settings.drain_max_bytes)


def run(settings: ServerSettings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, finishes in-flight requests, exits 0."""
    sock = bind(settings.host, settings.port)
    # NOTE: uvicorn captures SIGTERM while serving, drains, then re-raises it with the previous
    # handler restored; this handler turns that re-raise into a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "loop": "uvloop",
        "access_log": False, "log_level": settings.log_level, "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "server_header": False,
        "interface": "asgi3",  # FastInferApp.__call__ returns an awaitable without being a coroutine itself
        # X-Forwarded-* rewriting is for deployments behind a proxy; it costs time on every request.
        "proxy_headers": False,
    }
    limits = connection_limits(settings)
    if settings.workers > 1:
        os.environ.update(settings.to_env())
        config = GuardedConfig("inferlane.server.app:app_from_env", limits=limits, factory=True,
                               workers=settings.workers, **common)
        Multiprocess(config, sockets=[sock]).run()
        return
    config = GuardedConfig(create_app(settings), limits=limits, **common)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # start-up failed; uvicorn logged why
        raise SystemExit(1)
