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
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from uvicorn.supervisors.multiprocess import Multiprocess

from inferlane.core import tracing
from inferlane.core.errors import ConfigError
from inferlane.core.logs import configure_logging
from inferlane.core.metrics import MULTIPROC_ENV, Metrics
from inferlane.core.process import tune_gc
from inferlane.lanes.jobs import JobsLane, JobWorker
from inferlane.lanes.jobs.access import ApiKeys, check_open_access
from inferlane.lanes.jobs.lane import check_store
from inferlane.lanes.online import OnlineLane
from inferlane.lanes.online.hybrid import KeyedLane
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
from inferlane.transport.http.dashboard import dashboard_routes
from inferlane.transport.http.extensions import extension_routes
from inferlane.transport.http.protocol import ConnectionLimits, GuardedConfig
from inferlane.transport.http.requestlog import RequestLog
from inferlane.transport.http.sagemaker import model_for_sagemaker, sagemaker_routes

if TYPE_CHECKING:
    from inferlane.transport.grpc import GrpcServer

log = logging.getLogger("inferlane.server")


def create_app(settings: ServerSettings) -> FastInferApp:
    """The ASGI app. Models load in the background after start-up: the server is live at once
    and ready (``/v2/health/ready``) only once every version has loaded and warmed up and the stored
    rollout routes are applied."""
    metrics = Metrics(target_queue=settings.target_queue)
    registry = ModelRegistry.from_repository(settings.model_repository,
                                             observer_factory=metrics.batch_observer)
    metrics.watch_queues(registry.queue_states)
    drift = DriftMonitor(registry, metrics)  # a bad drift.reference_file stops the start here, in one line
    lane = OnlineLane(registry, metrics)
    keyed = KeyedLane(lane)
    keyed.open_stores([e.config for e in registry.entries.values()])  # a wrong store URL stops the start here
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
    token = AdminToken(settings.admin_token) if settings.admin_token else None
    extensions = extension_routes(registry, metrics, controller.orders, token, settings.body_timeout_s)
    extensions += dashboard_routes(registry, metrics, controller)  # public, like /metrics (docs/dashboard.md)
    if settings.sagemaker:
        extensions += sagemaker_mode(settings, lane, jobs)
    grpc = grpc_server(settings, lane, jobs, controller, token, keyed) if settings.grpc_port else None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        tracing.configure(settings.otlp_endpoint)  # in each server process: the exporter has a thread

        async def load() -> bool:
            try:
                await registry.load_all(ready=False)
            except Exception:  # logged, kept in registry.load_error; readiness stays false
                return False
            try:  # a restart mid-rollout goes on at the stored step, before readiness: no request sees the defaults
                await controller.resume_at_start()
            except Exception:
                log.exception("could not resume the stored rollouts from %s; serving the default versions",
                              settings.rollout_store)
            registry.ready = True
            metrics.replicas.set(1)
            return True

        async def load_then_work(loaded: bool = False) -> None:
            if not loaded and not await load():
                return
            loop = asyncio.get_running_loop()
            tasks.append(loop.create_task(_logged(metrics.publish_queues, "the queue metrics")))
            tasks.append(loop.create_task(_logged(controller.run, "the rollout controller")))
            tasks.append(loop.create_task(_logged(drift.run, "the drift monitor")))
            if watcher is not None:
                tasks.append(loop.create_task(_logged(functools.partial(watcher.run, settings.watch_interval_s),
                                                         "the repository watch")))
            tune_gc()
            if worker is not None:
                await worker.run()

        if grpc is not None:
            await grpc.start()  # serving at once, like HTTP: ServerReady says when the models are
        # NOTE: with --replicas the socket listens only after this start-up (uvicorn calls listen after the
        # lifespan), so loading here, before yielding, keeps every connection off a cold replica.
        if settings.reuse_port and not await load():
            raise RuntimeError("the models did not load: this replica does not listen")
        background = asyncio.get_running_loop().create_task(load_then_work(settings.reuse_port))
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop(settings.graceful_timeout_s)
            if worker is not None:
                await worker.stop(settings.graceful_timeout_s)
            for task in [background, *tasks]:
                task.cancel()
            await asyncio.gather(background, *tasks, return_exceptions=True)
            await controller.close()
            await keyed.aclose()
            await registry.close()
            store.close()
            rollout_store.close()
            metrics.close()
            tracing.shutdown()  # the spans still buffered go out

    app = build_http_app(lane, lifespan, body_timeout_s=settings.body_timeout_s, jobs=jobs,
                         hosts=loopback_hosts(settings.host), admin=admin, keyed=keyed, extensions=extensions)
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.rollouts = controller
    app.state.drift = drift
    return app


def sagemaker_mode(settings: ServerSettings, lane: OnlineLane, jobs: JobsLane) -> list[Route]:
    """/ping and /invocations (transport/http/sagemaker.py) on the one model SageMaker sends traffic to."""
    model = model_for_sagemaker(lane.registry.entries, settings.sagemaker_model)
    log.info("SageMaker mode: /ping and /invocations (model %s) on %s:%d, repository %s; listening on %s "
             "because SageMaker calls the container from outside it", model, settings.host, settings.port,
             settings.model_repository, settings.host)

    def ready() -> bool:  # as /v2/health/ready
        return lane.registry.ready and jobs.worker_problem is None

    return sagemaker_routes(lane, model, ready, body_timeout_s=settings.body_timeout_s)


def grpc_server(settings: ServerSettings, lane: OnlineLane, jobs: JobsLane, controller: RolloutController,
                token: AdminToken | None, keyed: KeyedLane | None = None) -> GrpcServer:
    """The gRPC transport (``--grpc-port``) on the online lane, started by the lifespan; ConfigError
    with the install command when grpcio is missing."""
    try:
        from inferlane.transport.grpc import GrpcServer, InferenceService, TlsFiles
    except ImportError as e:
        raise ConfigError(f"--grpc-port needs grpcio: pip install 'inferlane[grpc]' ({e})") from None
    registry = lane.registry

    def ready() -> bool:  # as /v2/health/ready
        return registry.ready and jobs.worker_problem is None

    service = InferenceService(lane, ready, orders=controller.orders, token=token, keyed=keyed)
    largest = max(e.config.limits.max_request_bytes for e in registry.entries.values())
    tls = None
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        tls = TlsFiles(settings.ssl_certfile, settings.ssl_keyfile)
    return GrpcServer(service, settings.host, settings.grpc_port, max_message_bytes=largest, tls=tls)


async def _logged(work: Callable[[], Awaitable[None]], what: str) -> None:
    """Run a background loop; a crash is logged (the server keeps serving) instead of vanishing with its task."""
    try:
        await work()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s stopped on an unexpected error", what)


def app_from_env() -> FastInferApp | RequestLog:
    """Factory for uvicorn worker processes (``--workers N``): settings come from INFERLANE_*."""
    settings = ServerSettings.from_env()
    _log_to_stderr(settings)  # a spawned worker does not inherit the parent's logging set-up
    return _with_request_log(create_app(settings), settings)


def _log_to_stderr(settings: ServerSettings) -> None:
    configure_logging(settings.log_level, settings.log_format)


def _with_request_log(app: FastInferApp, settings: ServerSettings) -> FastInferApp | RequestLog:
    """One log line per request in JSON mode only: in text mode nothing wraps the app (no cost)."""
    return RequestLog(app) if settings.log_format == "json" else app


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The listening socket, bound before anything loads: a port in use is one clear line (exit 2),
    not a traceback after start-up. ``reuse_port``: SO_REUSEPORT, the port shared with sibling replicas
    (bound, not yet listening: the kernel sends connections only to listening sockets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                          "(choose another with --port / INFERLANE_PORT, or --host / INFERLANE_HOST)") from None
    sock.set_inheritable(True)  # --workers N: the worker processes share it
    return sock


def check_port_free(host: str, port: int, flag: str) -> None:
    """ConfigError (exit 2, one line) when ``port`` cannot be bound: for the ports a server binds itself
    later (gRPC), checked before anything loads, as :func:`bind` does for HTTP."""
    with contextlib.closing(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                              f"(choose another with {flag})") from None


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[str]:
    """PROMETHEUS_MULTIPROC_DIR for the processes started inside (they inherit it and import
    prometheus_client after it is set): a fresh temporary folder removed afterwards, or the one the
    environment names (left in place: its owner cleans it)."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="inferlane-metrics-") as path:
        os.environ[MULTIPROC_ENV] = path
        try:
            yield path
        finally:
            del os.environ[MULTIPROC_ENV]


def connection_limits(settings: ServerSettings) -> ConnectionLimits:
    return ConnectionLimits(
        max_header_bytes=settings.max_header_bytes, max_headers=settings.max_headers,
        header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
        max_connections=settings.max_connections, drain_max_bytes=settings.drain_max_bytes)


def run(settings: ServerSettings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, finishes in-flight requests, exits 0."""
    sock = bind(settings.host, settings.port, settings.reuse_port)
    if settings.grpc_port:
        check_port_free(settings.host, settings.grpc_port, "--grpc-port / INFERLANE_GRPC_PORT")
    # NOTE: uvicorn captures SIGTERM while serving, drains, then re-raises it with the previous
    # handler restored; this handler turns that re-raise into a clean exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    _log_to_stderr(settings)
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "loop": "uvloop",
        "access_log": False, "log_level": settings.log_level, "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "server_header": False,
        "interface": "asgi3",  # FastInferApp.__call__ returns an awaitable without being a coroutine itself
        # X-Forwarded-* rewriting is for deployments behind a proxy; it costs time on every request.
        "proxy_headers": False,
    }
    if settings.log_format == "json":
        common["log_config"] = None  # keep configure_logging's JSON handler on uvicorn's loggers too
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        common.update(ssl_certfile=str(settings.ssl_certfile), ssl_keyfile=str(settings.ssl_keyfile))
    limits = connection_limits(settings)
    if settings.workers > 1:
        os.environ.update(settings.to_env())
        config = GuardedConfig("inferlane.server.app:app_from_env", limits=limits, factory=True,
                               workers=settings.workers, **common)
        with shared_metrics_dir():  # every worker's series in one place: any worker answers /metrics for all
            Multiprocess(config, sockets=[sock]).run()
        return
    config = GuardedConfig(_with_request_log(create_app(settings), settings), limits=limits, **common)
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:  # start-up failed; uvicorn logged why
        raise SystemExit(1)
