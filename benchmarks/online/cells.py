"""One cell: an endpoint at one concurrency. A warm-up, then ``repeat`` measured wrk runs, each with
the server's CPU (its process tree, from /proc) and the rest of the machine's read around it; the
cell reports the median of each figure over its runs."""

from __future__ import annotations

import os
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.online.config import CLIENT_BOUND_CPU, HOST, NOISY_CPU, SOCKET_ERRORS_ALLOWED, Endpoint, Options
from benchmarks.online.machine import batch_totals, log, others_cpu, pin, tcp_retransmits, wait_quiet
from benchmarks.online.wrk import WrkFailed, WrkResult, run_wrk, wrk_command
from inferlane.testing import all_cpu_seconds, process_tree, start_py_spy, tree_cpu_seconds
from inferlane.testing.profiling import py_spy_command


@dataclass(frozen=True)
class Run:
    """One measured wrk run and what the machine did meanwhile."""

    wrk: WrkResult
    wall_s: float
    """Wall time from just before wrk started to just after it exited."""
    server_cpu_s: float
    """CPU seconds of the server process and its children over ``wall_s``."""
    other_cpu_s: float
    """CPU seconds of every other process on the machine (not the server, not wrk, not py-spy)."""
    retransmits: int
    batch: tuple[float, float] | None
    """inferlane only: rows and forward passes the server ran during the run (from /metrics)."""


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Cell:
    endpoint: Endpoint
    concurrency: int
    runs: list[Run] = field(default_factory=list)
    error: str | None = None
    """Why the cell has no (or incomplete) figures: wrk failed, or the server did not start."""

    def _per_run(self, figure: Callable[[Run], float]) -> float:
        return _median([figure(r) for r in self.runs])

    @property
    def rps(self) -> float:
        return self._per_run(lambda r: r.wrk.rps)

    @property
    def p50_ms(self) -> float:
        return self._per_run(lambda r: r.wrk.p50_ms)

    @property
    def p99_ms(self) -> float:
        return self._per_run(lambda r: r.wrk.p99_ms)

    @property
    def server_cpu(self) -> float:
        """Share of one core the server used over the run."""
        return self._per_run(lambda r: r.server_cpu_s / r.wall_s)

    @property
    def cpu_us_per_request(self) -> float:
        return self._per_run(lambda r: r.server_cpu_s / r.wrk.requests * 1e6 if r.wrk.requests else float("nan"))

    @property
    def client_cpu(self) -> float:
        """Share of its core wrk used."""
        return self._per_run(lambda r: r.wrk.client_cpu_s / r.wall_s)

    @property
    def other_cpu(self) -> float:
        """The most CPU (share of one core) the rest of the machine used in any run."""
        return max((r.other_cpu_s / r.wall_s for r in self.runs), default=float("nan"))

    @property
    def mean_batch(self) -> float | None:
        sizes = [r.batch[0] / r.batch[1] for r in self.runs if r.batch is not None and r.batch[1] > 0]
        return _median(sizes) if sizes else None

    @property
    def requests(self) -> int:
        return sum(r.wrk.requests for r in self.runs)

    @property
    def non_2xx(self) -> int:
        return sum(r.wrk.non_2xx for r in self.runs)

    @property
    def socket_errors(self) -> int:
        return sum(r.wrk.socket_errors for r in self.runs)

    @property
    def retransmits(self) -> int:
        return sum(r.retransmits for r in self.runs)

    @property
    def client_bound(self) -> bool:
        return self.client_cpu >= CLIENT_BOUND_CPU

    @property
    def noisy(self) -> bool:
        """Other processes used a noticeable share of a core during a run."""
        return self.other_cpu >= NOISY_CPU

    @property
    def flagged(self) -> bool:
        """Figures to re-check before trusting: noisy, TCP retransmits (on loopback: a drop or a
        stall, which the server under test can cause too), wrk near saturation, or broken."""
        return self.noisy or self.retransmits > 0 or self.client_bound or self.broken

    @property
    def broken(self) -> bool:
        """The cell did not measure what it should: no figures, any non-2xx, or more than a
        handful of socket errors."""
        return (self.error is not None or self.requests == 0 or self.non_2xx > 0
                or self.socket_errors > SOCKET_ERRORS_ALLOWED)

    def figures(self) -> dict[str, object]:
        return {"server": self.endpoint.server, "model": self.endpoint.model, "mode": self.endpoint.mode,
                "concurrency": self.concurrency, "rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                "server_cpu": self.server_cpu, "cpu_us_per_request": self.cpu_us_per_request,
                "client_cpu": self.client_cpu, "other_cpu": self.other_cpu, "mean_batch": self.mean_batch,
                "requests": self.requests, "non_2xx": self.non_2xx, "socket_errors": self.socket_errors,
                "retransmits": self.retransmits, "noisy": self.noisy, "client_bound": self.client_bound,
                "flagged": self.flagged, "broken": self.broken, "error": self.error,
                "runs": [{"rps": r.wrk.rps, "p50_ms": r.wrk.p50_ms, "p99_ms": r.wrk.p99_ms, "max_ms": r.wrk.max_ms,
                          "requests": r.wrk.requests, "seconds": r.wrk.seconds, "wall_s": r.wall_s,
                          "server_cpu_s": r.server_cpu_s, "client_cpu_s": r.wrk.client_cpu_s,
                          "other_cpu_s": r.other_cpu_s} for r in self.runs]}


@dataclass(frozen=True)
class Serving:
    """A running server under test: its port and its process (the one taskset started)."""

    port: int
    pid: int


def measure_cell(opts: Options, endpoint: Endpoint, concurrency: int, serving: Serving, script: Path, *, first: bool,
                 profile_to: Path | None) -> Cell:
    """Measure one cell; with --retry-noisy, measure it again while it looks disturbed."""
    for attempt in range(opts.retry_noisy + 1):
        cell = _measure(opts, endpoint, concurrency, serving, script, first=first, profile_to=profile_to)
        if not cell.noisy or attempt == opts.retry_noisy:
            break
        log(f"the cell looks disturbed (other processes used {cell.other_cpu:.0%} of a core); measuring it again "
            f"({attempt + 1} of {opts.retry_noisy})")
    return cell


def _measure(opts: Options, endpoint: Endpoint, concurrency: int, serving: Serving, script: Path, *, first: bool,
             profile_to: Path | None) -> Cell:
    cell = Cell(endpoint, concurrency)
    url = f"http://{HOST}:{serving.port}{endpoint.path}"

    def wrk(seconds: int) -> list[str]:
        return wrk_command(url, concurrency, seconds, script, pin(opts.client_core))

    wait_quiet(opts.wait_quiet_s, process_tree(serving.pid))
    try:
        # The first cell of an endpoint always warms it up (connections, lazy starts, first runs).
        warmup = max(opts.warmup_s, 1 if first else 0)
        if warmup:
            run_wrk(wrk(warmup), timeout_s=warmup + 30)
        for i in range(opts.repeat):
            cell.runs.append(_measured_run(opts, endpoint, serving, wrk(opts.duration_s),
                                           profile_to if i == 0 else None))
    except WrkFailed as e:
        cell.error = str(e)
    return cell


def _measured_run(opts: Options, endpoint: Endpoint, serving: Serving, cmd: list[str],
                  profile_to: Path | None) -> Run:
    batch0 = batch_totals(serving.port, endpoint.served_name) if endpoint.server == "inferlane" else None
    others0 = all_cpu_seconds()
    cpu0, t0 = tree_cpu_seconds(serving.pid), time.perf_counter()
    spy = None
    if profile_to is not None:
        # py-spy runs on the client core, for the run less a second, so it ends inside it.
        seconds = max(1, opts.duration_s - 1)
        spy_cmd = py_spy_command(serving.pid, profile_to, duration_s=seconds, prefix=pin(opts.client_core))
        log(f"py-spy: {shlex.join(spy_cmd)}")
        spy = start_py_spy(serving.pid, profile_to, duration_s=seconds, prefix=pin(opts.client_core))
    retrans0 = tcp_retransmits()
    try:
        result = run_wrk(cmd, timeout_s=opts.duration_s + 30)
        wall, cpu1 = time.perf_counter() - t0, tree_cpu_seconds(serving.pid)
        retrans = tcp_retransmits() - retrans0
        ours = {*process_tree(serving.pid), os.getpid(), *([spy.pid] if spy else [])}
        other = others_cpu(others0, all_cpu_seconds(), ours)
    finally:
        if spy is not None:
            spy.wait(timeout=opts.duration_s + 60)
    batch1 = batch_totals(serving.port, endpoint.served_name) if batch0 is not None else None
    batch = None if batch0 is None or batch1 is None else (batch1[0] - batch0[0], batch1[1] - batch0[1])
    return Run(result, wall, cpu1 - cpu0, other, retrans, batch)
