"""Shared fixtures: a model repository built once per session and a real server subprocess."""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from inferlane.demo.models import write_fraud_model
from inferlane.testing import (
    RestartableRedis,
    ServerProcess,
    ServiceError,
    redis_server,
    serve,
    serve_or_fail,
    small_disk,
)

Server = ServerProcess  # the name the tests use for a running ``inferlane serve``

SLOW_MODEL = textwrap.dedent('''
    import time
    import numpy as np

    class Model:
        def load(self, version_dir):
            self.delay = float((version_dir / "delay.txt").read_text())

        def predict(self, batch):
            time.sleep(self.delay)
            return {"y": batch["x"] * 2.0}
''')


X4 = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
"""The signature of the test models that map x (FP32 [-1, 4]) to y of the same shape."""


def write_python_model(repo: Path, name: str, source: str, config: dict[str, object]) -> Path:
    """``<repo>/<name>``: version 1 is the Python class in ``source``; model.yaml is ``runtime: python``
    and ``config`` (its inputs, outputs and any other field)."""
    d = repo / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    (d / "1" / "model.py").write_text(source)
    (d / "model.yaml").write_text(yaml.safe_dump({"runtime": "python", **config}))
    return d


def write_slow_model(repo: Path, name: str = "slow", delay: float = 0.05, timeout_ms: int = 5000,
                     **batching: object) -> Path:
    """A Python-class model that sleeps ``delay`` seconds per batch (for queueing and deadlines)."""
    d = write_python_model(repo, name, SLOW_MODEL, {
        **X4,
        "batching": {"max_batch_size": 1, "max_queue_size": 4, "max_queue_delay_ms": 0, **batching},
        "timeout_ms": timeout_ms,
        "warmup": {"batch_sizes": [1]},
    })
    (d / "1" / "delay.txt").write_text(str(delay))
    return d


@pytest.fixture(autouse=True, scope="session")
def _state_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every lane's state folder (core/state.py) is a temporary one: no test, and no server or
    lane a test starts, keeps state in the checkout."""
    patch = pytest.MonkeyPatch()
    patch.setenv("INFERLANE_STATE_DIR", str(tmp_path_factory.mktemp("state")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud (ONNX, sklearn-trained) and slow (Python class, 50 ms per batch)."""
    repo = tmp_path_factory.mktemp("models")
    write_fraud_model(repo, rows=4000)
    write_slow_model(repo)
    return repo


def _serve(repo: Path, log: Path, extra: list[str] | None = None,
           env: dict[str, str] | None = None) -> Iterator[Server]:
    """For fixtures: ``inferlane serve repo`` on a free port until the fixture ends. A server that
    does not start fails the test with the end of its log."""
    # Each server keeps its job store next to its log, never in the working directory.
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{log.parent / 'jobs.db'}", **(env or {})}
    yield from serve_or_fail(serve(repo, log_path=log, extra=extra, env=env))


@pytest.fixture(scope="session")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``inferlane serve`` on a free port, shared by the end-to-end tests (read-only use)."""
    yield from _serve(model_repo, tmp_path_factory.mktemp("log") / "server.log")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throwaway redis-server shared by the session (persistence
    off). Fails, never skips, with the install command when redis-server is not installed."""
    yield from serve_or_fail(redis_server(tmp_path_factory.mktemp("redis")))


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    """A redis-server of this test that it may kill and start again at the same address (fault tests)."""
    server = RestartableRedis(tmp_path / "redis")
    try:
        server.start()
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def empty_store_url(request: pytest.FixtureRequest, sqlite_file: Path) -> str:
    """For a store fixture parametrized ``["sqlite", "redis"]``: a new SQLite file, or the session's
    Redis database flushed."""
    if request.param == "sqlite":
        return f"sqlite:///{sqlite_file}"  # an absolute path: sqlite:////...
    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """``inferlane.testing.small_disk``, failing the test (never skipping) where mounting is refused."""
    try:
        with small_disk(path, size) as mounted:
            yield mounted
    except ServiceError as e:
        pytest.fail(str(e), pytrace=False)
