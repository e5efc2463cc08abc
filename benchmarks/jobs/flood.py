"""Online latency while a flood of jobs drains, against the same server quiet.

Jobs ride the same batcher as online requests at background priority, so a flood may delay an
online request by at most the batch already running; what is left is the cost of taking in and
running the jobs on the same cores. One run measures, on the server with in-process workers:

  quiet  single-row online requests over ONLINE_CONCURRENCY keep-alive connections for --quiet-seconds;
  flood  the same online traffic while the submitter process submits --flood-jobs jobs at once and
         the workers drain them, until nothing is queued or running.

The figure is the flood p99 and its ratio to the quiet p99; the online lane's latency budget
(10-100 ms per request) is shown as a target. Every online answer must be 200 and every job must succeed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT
from benchmarks.jobs.scenarios import drained, fraud_body, percentile_ms, records
from benchmarks.jobs.submitter import HOST

ONLINE_CONCURRENCY = 4
SUBMIT_CONCURRENCY = 16
ONLINE_BUDGET_MS = 100.0
"""The top of the online lane's latency budget (10-100 ms per request)."""


@dataclass
class FloodRow:
    store: str
    jobs: int
    quiet_requests: int
    quiet_p50: float
    quiet_p99: float
    flood_requests: int
    flood_p50: float
    flood_p99: float
    flood_max: float
    drain_s: float

    @property
    def p99_ratio(self) -> float:
        return self.flood_p99 / self.quiet_p99 if self.quiet_p99 else float("nan")


async def _online(port: int, requests: list[bytes], stop: asyncio.Event) -> list[float]:
    """Online requests over ONLINE_CONCURRENCY connections, batch after batch, until ``stop``."""
    from inferlane.bench.burst import run_load

    latencies: list[float] = []
    while not stop.is_set():
        res = await run_load(HOST, port, requests, ONLINE_CONCURRENCY)
        if res.statuses != {200: len(requests)}:
            raise RuntimeError(f"online requests answered {dict(res.statuses)}")
        latencies += res.latencies
    return latencies


async def _measure(port: int, online: list[bytes], bodies: Path, quiet_s: float) -> tuple[list[float], list[float],
                                                                                           list[str], float]:
    import orjson

    stop = asyncio.Event()
    stream = asyncio.create_task(_online(port, online, stop))
    await asyncio.sleep(quiet_s)  # the quiet window: online traffic alone for quiet_s
    stop.set()
    quiet = await stream

    stop = asyncio.Event()
    stream = asyncio.create_task(_online(port, online, stop))
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.jobs.submitter", str(port), str(SUBMIT_CONCURRENCY), str(bodies),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the submitter exited with {proc.returncode}")
    submitted = orjson.loads(out)
    if set(submitted["statuses"]) != {"202"}:
        raise RuntimeError(f"submits answered {submitted['statuses']}")
    deadline = time.monotonic() + 300
    while not await asyncio.to_thread(drained, port):  # the store's listing, between online batches
        if time.monotonic() > deadline:
            raise RuntimeError("the jobs did not drain in 300 s")
        await asyncio.sleep(0.05)
    drain_s = time.perf_counter() - t0
    stop.set()
    return quiet, await stream, submitted["ids"], drain_s


def measure_flood(store: str, url: str, port: int, x: np.ndarray, online_rows: np.ndarray, quiet_s: float,
                  folder: Path) -> FloodRow:
    """``x``: one row per job (distinct inputs); ``online_rows``: the rows online requests cycle through."""
    from inferlane.bench.wire import build_request

    online = [build_request(HOST, port, "/v2/models/fraud/infer", fraud_body(row[None, :])) for row in online_rows]
    bodies = folder / "flood.jsonl"
    bodies.write_bytes(b"\n".join(fraud_body(row[None, :]) for row in x))
    quiet, flooded, ids, drain_s = asyncio.run(_measure(port, online, bodies, quiet_s))
    records(url, ids)  # every job succeeded, in one attempt
    if len(flooded) < 100:
        raise RuntimeError(f"only {len(flooded)} online requests during the flood: too few for a p99")
    return FloodRow(store, len(ids), len(quiet), percentile_ms(quiet, 50), percentile_ms(quiet, 99), len(flooded),
                    percentile_ms(flooded, 50), percentile_ms(flooded, 99), max(flooded) * 1e3, drain_s)
