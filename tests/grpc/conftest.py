"""The gRPC tests' servers: ``inferlane serve --grpc-port`` as a subprocess on free ports, ready when
HTTP says so (the gRPC server starts before HTTP accepts connections)."""

from __future__ import annotations

import contextlib
import shutil
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from inferlane.server.app import create_app
from inferlane.server.settings import ServerSettings
from inferlane.testing import LOOPBACK, free_port, is_ready, on_free_port, serve_or_fail, wait_until_async
from inferlane.testing.server import serve_command
from inferlane.transport.grpc.proto.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from tests.conftest import X4, write_python_model, write_slow_model


@contextlib.asynccontextmanager
async def in_process(repo: Path, tmp_path: Path, port: int) -> AsyncIterator[tuple[httpx.AsyncClient,
                                                                                   GRPCInferenceServiceStub]]:
    """``create_app`` with gRPC on ``port``, in this process: its lifespan runs, HTTP through ASGI, gRPC
    over a real channel; yields once the models are loaded."""
    settings = ServerSettings(model_repository=repo, grpc_port=port, jobs_workers=0,
                              jobs_store=f"sqlite:///{tmp_path / 'jobs.db'}",
                              rollout_store=f"sqlite:///{tmp_path / 'rollouts.db'}")
    app = create_app(settings)
    async with app.app.router.lifespan_context(app.app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http, \
            grpc.aio.insecure_channel(f"{LOOPBACK}:{port}") as channel:
        await wait_until_async(lambda: app.state.registry.ready, "the models are loaded")
        yield http, GRPCInferenceServiceStub(channel)


TOKEN = "grpc-tests-admin-token-0123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
"""gRPC metadata keys are lower-case (tritonclient passes ``headers`` as metadata as they are)."""

BROKEN_MODEL = textwrap.dedent('''
    class Model:
        def predict(self, batch):
            x = batch["x"]
            if (x == 13.0).any():
                raise ValueError("secret detail: /etc/models/broken cannot take 13")
            return {"y": x * 2.0}
''')


@dataclass(frozen=True)
class Served:
    """A running ``inferlane serve`` with both transports."""

    http_port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"


def _lost_a_port(log_text: str) -> bool:
    text = log_text.lower()
    return "address already in use" in text or "cannot listen" in text


@contextlib.contextmanager
def serve_grpc(repo: Path, log: Path, *, extra: list[str] | None = None, env: dict[str, str] | None = None,
               ready: Callable[[int], bool] = is_ready) -> Iterator[Served]:
    """``inferlane serve repo --grpc-port P`` on two free ports (both chosen again when one was taken first)."""
    grpc_ports: dict[int, int] = {}

    def command(port: int) -> list[str]:
        grpc_ports[port] = free_port()
        return serve_command(repo, port, ["--grpc-port", str(grpc_ports[port]), *(extra or [])])

    # Each server keeps its job and rollout stores next to its log: load/unload orders stay its own.
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{log.parent / 'jobs.db'}",
           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{log.parent / 'rollouts.db'}", **(env or {})}
    with on_free_port(command, ready, log=log, what=f"inferlane serve {repo} --grpc-port is ready",
                      start_timeout_s=120, stop_timeout_s=30, env=env, retry_if=_lost_a_port) as running:
        yield Served(running.port, grpc_ports[running.port], log)


def write_broken_model(repo: Path) -> None:
    """``broken``: y = 2x, except that it raises (with file paths in its message) on the value 13."""
    write_python_model(repo, "broken", BROKEN_MODEL, {**X4, "warmup": {"batch_sizes": [1]}})


@pytest.fixture(scope="module")
def grpc_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud (ONNX, 1 MiB request limit), ``stats`` (a copy of fraud only the statistics test calls), slow
    (50 ms per batch of one, queue of 4) and broken (fails on 13)."""
    repo = tmp_path_factory.mktemp("grpc-models")
    shutil.copytree(model_repo / "fraud", repo / "fraud")
    shutil.copytree(model_repo / "fraud", repo / "stats")
    write_slow_model(repo)
    write_broken_model(repo)
    return repo


@pytest.fixture(scope="module")
def served(grpc_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the module: gRPC on, admin token set."""
    log = tmp_path_factory.mktemp("grpc-log") / "server.log"
    yield from serve_or_fail(serve_grpc(grpc_repo, log, env={"INFERLANE_ADMIN_TOKEN": TOKEN}))
