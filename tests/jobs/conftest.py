"""Job-store fixtures: a real redis-server for the session, and a fresh store of each backend per test.

redis-server runs on a free port in a temp dir with persistence off; when it is not installed the
fixture fails (never skips) with the install command.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from inferlane.store.jobs import JobStore, open_job_store

INSTALL_REDIS_SERVER = "redis-server is not installed: run `apt-get install -y redis-server` (scripts/check does it)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _start(binary: str, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """redis-server on a free port; retried because another process may take the port first."""
    log = root / "redis.log"
    for _ in range(3):
        port = _free_port()
        with open(log, "wb") as out:
            proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                     "--appendonly", "no", "--dir", str(root)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline and proc.poll() is None:
            if _ping(port):
                return proc, port
            time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"redis-server did not answer PING:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a throwaway redis-server shared by the session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(INSTALL_REDIS_SERVER, pytrace=False)
    proc, port = _start(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend: a new SQLite file, or a flushed Redis database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"  # tmp_path is absolute: sqlite:////...
    url: str = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[JobStore]:
    job_store = open_job_store(store_url)
    yield job_store
    job_store.close()
