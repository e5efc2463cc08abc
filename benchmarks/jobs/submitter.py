"""The submitting client: ``python -m benchmarks.jobs.submitter PORT CONCURRENCY BODIES_FILE``.
Submits every line of BODIES_FILE as a job over CONCURRENCY keep-alive connections (the project's
load generator) and prints one JSON line: statuses, seconds, per-request latencies, job ids.

It runs in a process of its own so that submitting never competes with the benchmark's own event
loop (which measures online latency during a flood)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from benchmarks.common import emit

HOST = "127.0.0.1"
SUBMIT_PATH = "/v2/models/fraud/jobs"


def main(argv: list[str]) -> int:
    from inferlane.bench.burst import run_load
    from inferlane.bench.wire import build_request

    port, concurrency, bodies = int(argv[0]), int(argv[1]), Path(argv[2])
    raw = [build_request(HOST, port, SUBMIT_PATH, line.encode()) for line in bodies.read_text().splitlines()]
    res = asyncio.run(run_load(HOST, port, raw, concurrency, keep_headers=True))
    emit({"statuses": {str(k): v for k, v in res.statuses.items()}, "seconds": res.seconds,
          "latencies": res.latencies, "ids": [h.get("location", "").removeprefix("/v2/jobs/") for h in res.headers]})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
