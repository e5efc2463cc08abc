"""Run one measurement: a plan (open loop at a rate, or closed loop at a concurrency) in one or
several generator processes, merged into one report.

    report = measure(resolve(url, model="fraud"), Plan(rate=2000, duration_s=10, warmup_s=2))

Several processes split the rate and the connections evenly; each runs its own event loop (uvloop
when importable) and they start together after every one has connected. One Python process tops out
at a few tens of thousands of requests per second; the report's CPU share and lateness say when.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from inferlane.bench.engine import ClosedLoop, Tally, Target
from inferlane.bench.engine import OpenLoop as OpenLoopDriver
from inferlane.bench.report import Report, build_report
from inferlane.bench.target import Resolved
from inferlane.core.errors import ConfigError

T = TypeVar("T")
DEFAULT_OPEN_CONNECTIONS = 64
START_AFTER_S = 0.05
"""After every process has connected, the schedule starts this much later (same instant for all)."""


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it is installed (it comes with uvicorn[standard]), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


@dataclass(frozen=True)
class Plan:
    """One measurement. Exactly one of ``rate`` (open loop) and ``concurrency`` (closed loop)."""

    rate: float | None = None
    concurrency: int | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int | None = None
    """Open loop: the connection pool (default 64); closed loop: always ``concurrency``."""
    processes: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ConfigError("give one of --rate RPS (open loop) and --concurrency N (closed loop)")
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be a positive number of requests per second, not {self.rate:g}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.connections is not None and self.connections < 1:
            raise ConfigError(f"--connections must be at least 1, not {self.connections}")
        if self.processes < 1:
            raise ConfigError(f"--processes must be at least 1, not {self.processes}")
        if self.warmup_s < 0:
            raise ConfigError("--warmup cannot be negative")
        if self.n_connections < self.processes:
            raise ConfigError(f"{self.n_connections} connection(s) cannot be split over {self.processes} processes")

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"

    @property
    def n_connections(self) -> int:
        if self.concurrency is not None:
            return self.concurrency
        return self.connections or DEFAULT_OPEN_CONNECTIONS

    def share(self, index: int) -> tuple[float | None, int]:
        """Process ``index``'s rate and connections."""
        base, extra = divmod(self.n_connections, self.processes)
        conns = base + (1 if index < extra else 0)
        return (None if self.rate is None else self.rate / self.processes), conns


async def _one(target: Target, plan: Plan, index: int, ready: Any = None) -> Tally:
    rate, conns = plan.share(index)
    if rate is not None:
        driver: OpenLoopDriver | ClosedLoop = OpenLoopDriver(
            target, rate=rate, duration_s=plan.duration_s, warmup_s=plan.warmup_s, connections=conns,
            seed=plan.seed * 1000 + index)
    else:
        driver = ClosedLoop(target, duration_s=plan.duration_s, warmup_s=plan.warmup_s, connections=conns)
    await driver.connect()
    if ready is not None:  # every process connected: start together
        await asyncio.get_running_loop().run_in_executor(None, ready.wait)
    return await driver.run(start=time.perf_counter() + START_AFTER_S, connected=True)


def _child(target: Target, plan: Plan, index: int, ready: Any, results: Any) -> None:
    try:
        results.put((index, run_loop(_one(target, plan, index, ready))))
    except BaseException as e:
        ready.abort()
        results.put((index, f"{type(e).__name__}: {e}"))


def measure(resolved: Resolved, plan: Plan) -> Report:
    """Run ``plan`` against ``resolved`` and report; ConfigError when the server cannot be reached."""
    if plan.processes == 1:
        try:
            tally = run_loop(_one(resolved.target, plan, 0))
        except OSError as e:
            raise ConfigError(f"cannot connect to {resolved.url}: {e.strerror or e}") from None
    else:
        tally = _in_processes(resolved.target, plan)
    return build_report(tally, mode=plan.mode, url=resolved.url, connections=plan.n_connections,
                        processes=plan.processes, duration_s=plan.duration_s, warmup_s=plan.warmup_s,
                        target_rate=plan.rate)


def _in_processes(target: Target, plan: Plan) -> Tally:
    ctx = multiprocessing.get_context("spawn")  # no forked copy of the caller's threads or loop
    ready = ctx.Barrier(plan.processes)
    results = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(target, plan, i, ready, results), daemon=True)
             for i in range(plan.processes)]
    for p in procs:
        p.start()
    total, failures = Tally(), []
    for _ in procs:
        _, got = results.get(timeout=plan.warmup_s + plan.duration_s + target.timeout_s + 60)
        if isinstance(got, str):
            failures.append(got)
        else:
            total.merge(got)
    for p in procs:
        p.join()
    if failures:
        raise ConfigError(f"a generator process failed: {failures[0]}")
    return total
