"""The load driver: ``python -m benchmarks.online.driver '<DriverConfig as JSON>'``, run pinned to
the client core. It warms up, prints ``{"event": "start"}`` as the measured run begins (the
benchmark starts its CPU and /metrics readings then) and ``{"event": "done", ...}`` with the results.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from benchmarks.common import emit
from benchmarks.online.config import HOST, DriverConfig, infer_body


async def drive(cfg: DriverConfig) -> dict[str, Any]:
    from inferlane.demo.loadgen import build_request, run_load
    from inferlane.demo.models import synthetic_transactions

    x, _ = synthetic_transactions(cfg.distinct_bodies, seed=cfg.seed)
    raws = [build_request(HOST, cfg.port, cfg.path, infer_body(row)) for row in x.tolist()]

    def batch(n: int) -> list[bytes]:
        return [raws[i % len(raws)] for i in range(n)]

    c = cfg.concurrency
    # Warm-up: short bursts until warmup_s has passed; the last burst's rate sizes the measured
    # run, so every cell measures for about duration_s whatever its throughput.
    rate = 0.0
    warm_requests = 0
    t_end = time.perf_counter() + cfg.warmup_s
    n = max(4 * c, 32)
    while True:
        res = await run_load(HOST, cfg.port, batch(n), c)
        warm_requests += len(res.latencies)
        rate = res.rps
        left = t_end - time.perf_counter()
        if left <= 0:
            break
        n = max(4 * c, int(rate * min(0.5, left)))
    emit({"event": "start"})
    n = max(10 * c, int(rate * cfg.duration_s))
    cpu0 = time.process_time()
    res = await run_load(HOST, cfg.port, batch(n), c)
    cpu = time.process_time() - cpu0
    lat_ms = sorted(v * 1e3 for v in res.latencies)
    return {
        "event": "done", "requests": len(res.latencies), "seconds": res.seconds, "rps": res.rps,
        "p50_ms": res.percentile(50) * 1e3, "p99_ms": res.percentile(99) * 1e3,
        "mean_ms": sum(lat_ms) / len(lat_ms) if lat_ms else float("nan"),
        "max_ms": lat_ms[-1] if lat_ms else float("nan"),
        "statuses": {str(k): v for k, v in sorted(res.statuses.items())},
        "errors": len(res.latencies) - res.ok, "client_cpu_s": cpu,
        "warmup_requests": warm_requests,
    }


def main(argv: list[str]) -> int:
    import uvloop

    cfg = DriverConfig(**json.loads(argv[0]))
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            doc = runner.run(drive(cfg))
    except Exception as e:  # report, never hang the benchmark
        doc = {"event": "done", "exception": f"{type(e).__name__}: {e}"}
    emit(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
