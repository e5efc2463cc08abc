"""Start a server process on a free port, with the port-race retry every starter needs.

    with on_free_port(command, ready, log=root / "redis.log", what="redis-server answers PING",
                      start_timeout_s=15) as running:
        running.port, running.proc

``free_port`` only finds a port that is free now: another process may bind it before our server
does, and the server then exits (or never answers). Either way the attempt is abandoned and the
server is started again on a new port, up to ``attempts`` times.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from inferlane.testing.ports import free_port
from inferlane.testing.processes import exited, log_tail, stop_process
from inferlane.testing.waiting import WaitFailed, wait_until


class ServiceError(RuntimeError):
    """A service (a test server, a broker, a database) could not be found or started. The message
    says what to install or what went wrong."""


@dataclass(frozen=True)
class Running:
    """A started server process and the port it listens on."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def always(log_text: str) -> bool:
    """Retry whatever went wrong (the default of ``on_free_port``)."""
    return True


def _serving(ready: Callable[[int], bool], port: int, proc: subprocess.Popen[bytes]) -> Callable[[], bool]:
    # Ready *and* still running: after a lost race another process may be the one answering.
    return lambda: ready(port) and proc.poll() is None


@contextlib.contextmanager
def on_free_port(command: Callable[[int], list[str]], ready: Callable[[int], bool], *, log: Path, what: str,
                 start_timeout_s: float, stop_timeout_s: float = 10.0, cwd: Path | None = None,
                 env: dict[str, str] | None = None, attempts: int = 3,
                 retry_if: Callable[[str], bool] = always) -> Iterator[Running]:
    """Run ``command(port)`` on a free port until ``ready(port)``; yield it, stop it afterwards.

    An attempt that exits or does not become ready within ``start_timeout_s`` is stopped and, when
    ``retry_if(log text)`` agrees, started again on a new port. Raises ServiceError with the end of
    the log when no attempt became ready."""
    failure = ""
    for _ in range(attempts):
        port = free_port()
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                    env=None if env is None else {**os.environ, **env})
        try:
            wait_until(_serving(ready, port, proc), what, start_timeout_s, abort_if=[exited(proc)])
        except WaitFailed as e:
            stop_process(proc, timeout_s=0)
            failure = str(e)
            if retry_if(log_tail(log)):
                continue
            break
        try:
            yield Running(port, proc, log)
        finally:
            stop_process(proc, timeout_s=stop_timeout_s)
        return
    raise ServiceError(f"{failure}\n{log}:\n{log_tail(log)}")
