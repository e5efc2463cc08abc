"""A throwaway redis-server on a free loopback port.

    with redis_server(tmp) as url:                       # redis://127.0.0.1:PORT/0, persistence off
        ...
    with redis_server(tmp, appendfsync="always") as url:  # an append-only file, fsync per write
        ...
    server = RestartableRedis(tmp); server.start(); server.kill(); server.start()   # fault tests
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inferlane.testing.ports import LOOPBACK, free_port
from inferlane.testing.processes import exited
from inferlane.testing.services.launcher import Running, ServiceError, on_free_port
from inferlane.testing.waiting import wait_until

INSTALL_REDIS_SERVER = "redis-server is not installed: run `apt-get install -y redis-server` (scripts/check does it)"

AppendFsync = Literal["always", "everysec", "off"]


def redis_ping(port: int) -> bool:
    """True when a redis-server on ``port`` answers PING."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py's default retries make one PING to a port taken by something else last ~9 s.
    client = redis.Redis(host=LOOPBACK, port=port, socket_connect_timeout=0.5, socket_timeout=0.5,
                         retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_command(root: Path, port: int, *, appendfsync: AppendFsync = "off") -> list[str]:
    """The redis-server command line: loopback only, no snapshots, data and log in ``root``;
    ``appendfsync`` other than ``off`` turns on the append-only file with that fsync policy."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceError(INSTALL_REDIS_SERVER)
    persistence = ["--appendonly", "no"] if appendfsync == "off" else ["--appendonly", "yes",
                                                                       "--appendfsync", appendfsync]
    return [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", *persistence, "--dir", str(root)]


@contextlib.contextmanager
def redis_process(root: Path, *, appendfsync: AppendFsync = "off") -> Iterator[Running]:
    """Start redis-server (log in ``root/redis.log``, data in ``root``) on a free port; yields the
    running process (a benchmark reads its CPU time). ``appendfsync`` other than ``off`` turns on the
    append-only file with that fsync policy. Raises ServiceError with the install command when missing."""
    redis_command(root, 0, appendfsync=appendfsync)  # a missing redis-server fails here, before any attempt

    def command(port: int) -> list[str]:
        return redis_command(root, port, appendfsync=appendfsync)

    with on_free_port(command, redis_ping, log=root / "redis.log", what="redis-server answers PING",
                      start_timeout_s=15.0) as running:
        yield running


@contextlib.contextmanager
def redis_server(root: Path, *, appendfsync: AppendFsync = "off") -> Iterator[str]:
    """Start redis-server on a free port (see redis_process); yields ``redis://127.0.0.1:PORT/0``."""
    with redis_process(root, appendfsync=appendfsync) as running:
        yield f"redis://{LOOPBACK}:{running.port}/0"


@dataclass
class RestartableRedis:
    """A redis-server for fault tests: an append-only file fsynced per write, on a fixed port, so it
    can be killed (or stopped) and started again at the same address with its data.

        server = RestartableRedis(tmp / "redis")
        server.start(); ...; server.kill(); server.start()   # the same url, the same data
    """

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        """Start it and wait for PING; ServiceError when redis-server is missing or does not start."""
        self.folder.mkdir(parents=True, exist_ok=True)
        command = redis_command(self.folder, self.port, appendfsync="always")
        log = self.folder / "redis.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.folder)
        wait_until(lambda: redis_ping(self.port), "redis-server answers PING", 15, abort_if=[exited(self.proc, log)])

    def kill(self) -> None:
        """SIGKILL: the append-only file already holds every acknowledged write."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (redis-server flushes and exits), if it runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
