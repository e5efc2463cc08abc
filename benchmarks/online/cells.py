"""Measuring: one cell (a server, a model, a mode, a concurrency) through a load driver pinned to
the client core, and the raw ONNX Runtime figures on the server core."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, module_command
from benchmarks.online.config import (
    CLIENT_BOUND_CPU,
    MODELS,
    MODES,
    NOISY_CPU,
    STALLED_CPU,
    DriverConfig,
    Options,
    infer_path,
    served_name,
)
from benchmarks.online.machine import log, model_totals, pin, tcp_retransmits, wait_quiet
from inferlane.testing import all_cpu_seconds, cpu_seconds, is_ready, on_free_port, serve, start_py_spy
from inferlane.testing.profiling import py_spy_command


@dataclass
class Cell:
    section: str
    model: str
    mode: str
    concurrency: int
    rps: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_batch: float | None = None
    forward_ms: float | None = None
    """Mean time per forward pass as the server measured it (inferlane_forward_seconds)."""
    errors: int = 0
    requests: int = 0
    seconds: float = 0.0
    server_cpu: float = float("nan")
    """Share of its core the server process used during the measured run."""
    client_cpu: float = float("nan")
    """Share of its core the load driver used during the measured run."""
    other_cpu: float = float("nan")
    """CPU every other process on the machine used during the measured run (share of one core):
    anything well above zero means the cell shared the machine with foreign work."""
    retransmits: int = 0
    """TCP segments the machine retransmitted during the measured run (loopback drops)."""
    statuses: dict[str, int] = field(default_factory=dict)
    exception: str | None = None

    @property
    def client_bound(self) -> bool:
        return self.client_cpu >= CLIENT_BOUND_CPU

    @property
    def noisy(self) -> bool:
        return self.other_cpu >= NOISY_CPU

    @property
    def stalled(self) -> bool:
        """The bare endpoint under concurrent load always saturates its core; when it did not,
        something outside both processes held them up (seen as TCP retransmits, or a stall)."""
        return self.retransmits > 0 or (self.section == "HTTP floor" and self.concurrency >= 16
                                        and self.server_cpu < STALLED_CPU)

    @property
    def suspect(self) -> bool:
        return self.noisy or self.stalled or self.exception is not None

    @property
    def broken(self) -> bool:
        """The cell did not measure what it should: the driver failed, or the server answered
        anything but 200."""
        return self.exception is not None or self.errors > 0 or self.requests == 0


def measure_cell(opts: Options, proto: Cell, port: int, path: str, server_pid: int,
                 profile_to: Path | None, batch_model: str | None) -> Cell:
    """Measure one cell; with --retry-noisy, measure it again while it looks disturbed."""
    for attempt in range(opts.retry_noisy + 1):
        cell = replace(proto)
        run_driver(opts, port, path, server_pid, cell, profile_to, batch_model)
        if not cell.suspect or attempt == opts.retry_noisy:
            break
        log(f"the cell looks disturbed (other processes {cell.other_cpu:.0%} of a core, server "
            f"{cell.server_cpu:.0%}, {cell.retransmits} TCP retransmits); measuring it again "
            f"({attempt + 1} of {opts.retry_noisy})")
    return cell


def run_driver(opts: Options, port: int, path: str, server_pid: int, cell: Cell,
               profile_to: Path | None = None, batch_model: str | None = None) -> None:
    """Run one measured cell through a pinned driver subprocess; fills ``cell`` in place.

    With ``batch_model``, the mean batch size comes from the server's /metrics, read when the
    measured run starts and when it ends (so the warm-up is not counted)."""
    cfg = DriverConfig(port=port, path=path, concurrency=cell.concurrency, warmup_s=opts.warmup_s,
                       duration_s=opts.duration_s)
    wait_quiet(opts, server_pid)
    cmd = module_command("benchmarks.online.driver", json.dumps(asdict(cfg)), prefix=pin(opts.client_core))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    watchdog = threading.Timer(opts.warmup_s * 4 + opts.duration_s * 4 + 120, proc.kill)
    watchdog.start()
    spy: subprocess.Popen[bytes] | None = None
    cpu0 = t0 = 0.0
    others0: dict[int, float] = {}
    totals0: dict[str, float] = {}
    retrans0 = 0
    done: dict[str, Any] = {"exception": "the driver exited without a result"}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            doc = json.loads(line)
            if doc["event"] == "start":
                others0 = all_cpu_seconds()
                cpu0, t0 = cpu_seconds(server_pid), time.perf_counter()
                if profile_to is not None:
                    spy = profile(opts, server_pid, profile_to)
                retrans0 = tcp_retransmits()
                if batch_model is not None:
                    totals0 = model_totals(port, batch_model)
            elif doc["event"] == "done":
                if "exception" not in doc:
                    wall = time.perf_counter() - t0
                    cell.server_cpu = (cpu_seconds(server_pid) - cpu0) / wall
                    ours = {server_pid, proc.pid, os.getpid(), spy.pid if spy else -1}
                    others = sum(v - others0.get(pid, 0.0) for pid, v in all_cpu_seconds().items() if pid not in ours)
                    cell.other_cpu = others / wall
                    cell.retransmits = tcp_retransmits() - retrans0
                    if batch_model is not None:
                        d = {k: v - totals0[k] for k, v in model_totals(port, batch_model).items()}
                        if d["batch_size_count"] > 0:
                            cell.mean_batch = d["batch_size_sum"] / d["batch_size_count"]
                            cell.forward_ms = d["forward_seconds_sum"] / d["batch_size_count"] * 1e3
                done = doc
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if spy is not None:
        spy.wait(timeout=opts.duration_s + 60)
    if "exception" in done:
        cell.exception = done["exception"]
        cell.errors = max(cell.errors, 1)
        return
    cell.rps, cell.p50_ms, cell.p99_ms = done["rps"], done["p50_ms"], done["p99_ms"]
    cell.errors, cell.requests, cell.seconds = done["errors"], done["requests"], done["seconds"]
    cell.statuses = done["statuses"]
    cell.client_cpu = done["client_cpu_s"] / done["seconds"] if done["seconds"] else float("nan")


def profile(opts: Options, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on the client core for the measured run (less a second, so it ends inside it)."""
    duration = int(opts.duration_s) - 1
    log(f"py-spy: {shlex.join(py_spy_command(pid, out, duration_s=duration, prefix=pin(opts.client_core)))}")
    return start_py_spy(pid, out, duration_s=duration, prefix=pin(opts.client_core))


def measure_raw(opts: Options, repo: Path) -> dict[str, dict[str, float]]:
    spec = {"seconds": opts.raw_s, "models": {m: str(repo / m / "1" / "model.onnx") for m in MODELS}}
    out = subprocess.run(module_command("benchmarks.online.raw", json.dumps(spec), prefix=pin(opts.server_core)),
                         check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, dict[str, float]] = json.loads(out.stdout)
    return result


def _profile_to(opts: Options, c: int, name: str) -> Path | None:
    if opts.py_spy is not None and c == max(opts.concurrency):
        return opts.py_spy / f"{name}-c{c}.txt"
    return None


def measure_bare(opts: Options, workdir: Path) -> list[Cell]:
    cells = []
    with on_free_port(lambda port: module_command("benchmarks.online.bare", str(port), prefix=pin(opts.server_core)),
                      is_ready, log=workdir / "bare.log", what="the bare endpoint is ready", start_timeout_s=60,
                      cwd=ROOT) as bare:
        for c in opts.concurrency:
            log(f"bare Starlette endpoint, concurrency {c}")
            cells.append(measure_cell(opts, Cell("HTTP floor", "-", "bare constant", c), bare.port,
                                      infer_path("small"), bare.proc.pid, _profile_to(opts, c, "bare"), None))
    return cells


def measure_inferlane(opts: Options, repo: Path, workdir: Path) -> list[Cell]:
    cells = []
    log_path = workdir / "server.log"
    with serve(repo, log_path=log_path, prefix=pin(opts.server_core), ready_timeout_s=180) as server:
        for model in MODELS:
            for mode in MODES:
                name = served_name(model, mode)
                for c in opts.concurrency:
                    log(f"inferlane {model} ({mode}), concurrency {c}")
                    cells.append(measure_cell(opts, Cell("inferlane", model, mode, c), server.port,
                                              infer_path(name), server.proc.pid,
                                              _profile_to(opts, c, f"inferlane-{name}"), name))
                    if server.proc.poll() is not None:
                        raise RuntimeError(f"the server exited with code {server.proc.returncode}; see {log_path}")
    if server.proc.returncode not in (0, None):
        log(f"the server exited with code {server.proc.returncode}")
    return cells
