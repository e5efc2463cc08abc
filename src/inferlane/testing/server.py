"""The real ``inferlane serve`` as a subprocess on a free port, ready when it says so.

    with serve(repo, log_path=tmp / "server.log", env={"INFERLANE_JOBS_WORKERS": "0"}) as server:
        httpx.get(f"{server.url}/v2/health/ready")
    # stopped with SIGTERM (drains, exits 0); server.proc.returncode holds the exit code

    proc = start_server(repo, port, log_path=log)      # the pieces, for tests of start-up itself
    wait_ready(port, proc, log=log)
    stop_process(proc)

Readiness is ``GET /v2/health/ready`` answering 200: every model version loaded and warmed up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inferlane.testing.ports import LOOPBACK
from inferlane.testing.processes import exited
from inferlane.testing.services.launcher import on_free_port
from inferlane.testing.waiting import wait_until


@dataclass(frozen=True)
class ServerProcess:
    """A running ``inferlane serve``: its port, process and log file."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


def serve_command(repo: Path, port: int, extra: list[str] | None = None,
                  prefix: list[str] | None = None) -> list[str]:
    """``prefix`` runs the server under another command (e.g. ``taskset -c 1``)."""
    return [*(prefix or []), sys.executable, "-m", "inferlane", "serve", str(repo),
            "--port", str(port), "--log-level", "warning", *(extra or [])]


def start_server(repo: Path, port: int, *, extra: list[str] | None = None, prefix: list[str] | None = None,
                 log_path: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``inferlane serve repo --port port`` (output to ``log_path``, or discarded); returns at
    once. ``env`` adds to this process's environment."""
    cmd = serve_command(repo, port, extra, prefix)
    full_env = {**os.environ, **(env or {})}
    if log_path is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=full_env)
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)


def is_ready(port: int) -> bool:
    """True when ``GET /v2/health/ready`` on ``port`` answers 200."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0,
               log: Path | None = None) -> None:
    """Wait until the server on ``port`` is ready; fails at once (with the end of ``log``) when
    ``proc`` exits first."""
    aborts = [exited(proc, log)] if proc is not None else []
    wait_until(lambda: is_ready(port), f"the server on port {port} is ready", timeout_s, abort_if=aborts)


def _lost_port_race(log_text: str) -> bool:
    return "address already in use" in log_text.lower()


@contextlib.contextmanager
def serve(repo: Path, *, log_path: Path, extra: list[str] | None = None, prefix: list[str] | None = None,
          env: dict[str, str] | None = None, ready_timeout_s: float = 120.0,
          stop_timeout_s: float = 30.0) -> Iterator[ServerProcess]:
    """Run ``inferlane serve`` on a free port until it is ready; yield it; stop it (SIGTERM) after.

    Started again on a new port when another process took the port first; any other failure to
    start raises ServiceError with the end of the log."""
    with on_free_port(lambda port: serve_command(repo, port, extra, prefix), is_ready, log=log_path,
                      what=f"inferlane serve {repo} is ready", start_timeout_s=ready_timeout_s,
                      stop_timeout_s=stop_timeout_s, env=env, retry_if=_lost_port_race) as running:
        yield ServerProcess(running.port, running.proc, log_path)

