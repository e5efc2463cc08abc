"""The servers under test, each started pinned to the server core on a free port and ready when
``GET /v2/health/ready`` answers 200: the bare endpoint, a naive endpoint per model, and
``inferlane serve`` on the model repository (all four models, default settings)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from benchmarks.common import ROOT, module_command
from benchmarks.online.cells import Serving
from benchmarks.online.config import Endpoint
from benchmarks.online.machine import pin
from inferlane.testing import is_ready, on_free_port, serve


def log_name(endpoint: Endpoint) -> str:
    """The server's log file (in the run's work folder) for ``endpoint``."""
    return f"naive-{endpoint.model}.log" if endpoint.server == "naive" else f"{endpoint.server}.log"


@contextlib.contextmanager
def module_server(module: str, core: int, log: Path, what: str, start_timeout_s: float = 60) -> Iterator[Serving]:
    """``python -m module PORT`` pinned to ``core`` on a free port, ready when ``GET /v2/health/ready``
    answers 200."""
    with on_free_port(lambda port: module_command(module, str(port), prefix=pin(core)), is_ready, log=log,
                      what=what, start_timeout_s=start_timeout_s, cwd=ROOT) as running:
        yield Serving(running.port, running.proc.pid)


def bare_server(core: int, work: Path) -> contextlib.AbstractContextManager[Serving]:
    return module_server("benchmarks.online.bare", core, work / "bare.log", "the bare endpoint is ready")


@contextlib.contextmanager
def naive_server(core: int, work: Path, model: str, onnx: Path) -> Iterator[Serving]:
    def command(port: int) -> list[str]:
        return module_command("benchmarks.online.naive", str(port), model, str(onnx), prefix=pin(core))

    with on_free_port(command, is_ready, log=work / f"naive-{model}.log", what=f"the naive {model} endpoint is ready",
                      start_timeout_s=60, cwd=ROOT) as running:
        yield Serving(running.port, running.proc.pid)


@contextlib.contextmanager
def inferlane_server(core: int, work: Path, repo: Path) -> Iterator[Serving]:
    """``inferlane serve repo`` exactly as a user runs it (the harness adds ``--log-level warning``)."""
    with serve(repo, log_path=work / "inferlane.log", prefix=pin(core), ready_timeout_s=180) as server:
        yield Serving(server.port, server.proc.pid)
