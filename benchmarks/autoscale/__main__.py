"""``python -m benchmarks.autoscale [--quick]``: a load step from 10% to 150% of one replica's capacity
against ``inferlane serve --replicas 1..4``, then idle, printed as a time series per 5 s window:
replicas serving, queue depth (largest sample), requests sent, failures and p99 latency.

The model sleeps 50 ms per request, one request per batch, so one replica carries 20 requests/s and
the capacity is known without measuring. The load is open loop (each request on schedule, on a new
connection, whatever the earlier answers), so a queue shows as latency rather than a slower client.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import logger
from inferlane.testing.server import serve

CAPACITY = 20.0
BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}]}
SLOW_MODEL = """
import time


class Model:
    def load(self, version_dir):
        pass

    def predict(self, batch):
        time.sleep(0.05)
        return {"y": batch["x"] * 2.0}
"""
MODEL_YAML = """runtime: python
inputs: [{name: x, datatype: FP32, shape: [-1, 4]}]
outputs: [{name: y, datatype: FP32, shape: [-1, 4]}]
batching: {max_batch_size: 1, max_queue_size: 2000, max_queue_delay_ms: 0}
timeout_ms: 30000
warmup: {batch_sizes: [1]}
"""
log = logger("autoscale")


@dataclass
class Series:
    sent: list[tuple[float, float, int]] = field(default_factory=list)
    """(send time, latency s, status; 0: no answer)."""
    samples: list[tuple[float, float, float]] = field(default_factory=list)
    """(time, replicas serving, queue depth)."""


async def load(url: str, phases: list[tuple[float, float]], series: Series, t0: float) -> None:
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()

        async def one(sent: float) -> None:
            try:
                r = await client.post(f"{url}/v2/models/slow/infer", json=BODY)
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            series.sent.append((sent - t0, time.monotonic() - sent, status))

        for seconds, rate in phases:
            end = time.monotonic() + seconds
            due = time.monotonic()
            while due < end:
                if rate > 0:
                    task = asyncio.create_task(one(time.monotonic()))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    due += 1 / rate
                else:
                    due = end
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        await asyncio.gather(*tasks)


async def sample(url: str, series: Series, t0: float, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            text = (await client.get(f"{url}/metrics")).text
            values = {"inferlane_replicas": 0.0, "inferlane_queue_depth": 0.0}
            for line in text.splitlines():
                for name in values:
                    if line.startswith(name + " ") or line.startswith(name + "{"):
                        values[name] += float(line.rsplit(" ", 1)[1])
            series.samples.append((time.monotonic() - t0, values["inferlane_replicas"],
                                   values["inferlane_queue_depth"]))
            await asyncio.sleep(1.0)


async def drive(url: str, phases: list[tuple[float, float]]) -> Series:
    series = Series()
    t0 = time.monotonic()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(url, series, t0, stop))
    await load(url, phases, series, t0)
    stop.set()
    await sampler
    return series


def table(series: Series, phases: list[tuple[float, float]], window: float = 5.0) -> str:
    end = max(t for t, _, _ in series.samples)
    rows = ["| t (s) | load (rps) | replicas | queue depth (max) | sent | failed | p99 (ms) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for i in range(math.ceil(end / window)):
        lo, hi = i * window, (i + 1) * window
        rate, acc = 0.0, 0.0
        for seconds, r in phases:
            if acc <= lo < acc + seconds:
                rate = r
            acc += seconds
        samples = [s for s in series.samples if lo <= s[0] < hi]
        sent = [s for s in series.sent if lo <= s[0] < hi]
        ok = [lat for _, lat, code in sent if code == 200]
        p99 = f"{np.percentile(ok, 99) * 1e3:.0f}" if ok else "-"
        reps = f"{max(s[1] for s in samples):.0f}" if samples else "-"
        depth = f"{max(s[2] for s in samples):.0f}" if samples else "-"
        rows.append(f"| {lo:.0f}-{hi:.0f} | {rate:g} | {reps} | {depth} | {len(sent)} | "
                    f"{sum(1 for _, _, c in sent if c != 200)} | {p99} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.autoscale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter phases and windows (about 40 s)")
    args = p.parse_args(argv)
    scale = 0.4 if args.quick else 1.0
    window = 2.0 if args.quick else 5.0
    phases = [(15 * scale, 0.1 * CAPACITY), (40 * scale, 1.5 * CAPACITY), (45 * scale, 0.0)]
    with tempfile.TemporaryDirectory(prefix="autoscale-") as tmp:
        root = Path(tmp)
        model = root / "repo" / "slow"
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(SLOW_MODEL)
        (model / "model.yaml").write_text(MODEL_YAML)
        extra = ["--replicas", "1..4", "--target-queue", "20", "--scale-window", str(window),
                 "--scale-down-window", str(3 * window), "--log-level", "info"]
        log(f"serve --replicas 1..4, target 20, scale window {window:g} s, down window {3 * window:g} s; "
            f"phases (s, rps): {phases}")
        with serve(root / "repo", log_path=root / "server.log", extra=extra,
                   env={"INFERLANE_JOBS_STORE": f"sqlite:///{root / 'jobs.db'}"}) as server:
            series = asyncio.run(drive(server.url, phases))
            decisions = [line.split("supervisor: ", 1)[1] for line in server.log.read_text().splitlines()
                         if "supervisor: scale" in line]
    print(f"One replica: {CAPACITY:g} requests/s (50 ms per request, one at a time). Open-loop load step "
          f"10% -> 150% -> idle.\n")
    print(table(series, phases))
    print("\nScale decisions:\n" + "\n".join(f"- {d}" for d in decisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
