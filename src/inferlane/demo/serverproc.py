"""Start ``inferlane serve`` as a subprocess on a free port and wait until it is ready."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before becoming ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server on port {port} not ready after {timeout:.0f} s")


def start_server(repo: Path, port: int, *, extra: list[str] | None = None,
                 prefix: list[str] | None = None, log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``prefix`` runs the server under another command (e.g. ``taskset -c 1``)."""
    cmd = [*(prefix or []), sys.executable, "-m", "inferlane", "serve", str(repo),
           "--port", str(port), "--log-level", "warning", *(extra or [])]
    full_env = {**os.environ, **(env or {})}
    if log_path is None:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=full_env)
    with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
