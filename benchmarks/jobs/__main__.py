"""``python -m benchmarks.jobs``: the jobs lane with SQLite and Redis stores, against ``inferlane serve``
on loopback with the fraud model. See benchmarks/README.md for every row and column.

    .venv/bin/python -m benchmarks.jobs                    # full run (about a minute on 2 cores)
    .venv/bin/python -m benchmarks.jobs --quick            # smoke run (under a minute)
    .venv/bin/python -m benchmarks.jobs --stores sqlite --jobs 5000

Every job is one row of 30 float32 features (distinct rows). Times in a job record are the server's
wall clock; the client's latencies are perf_counter. Exit status 1 (a traceback) when anything broke:
a submit not answered 202, a job that did not succeed, an online request not answered 200.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import command_line, load_average, logger, machine_line
from benchmarks.jobs.flood import ONLINE_BUDGET_MS, ONLINE_CONCURRENCY, SUBMIT_CONCURRENCY, FloodRow, measure_flood
from benchmarks.jobs.report import flood_table, jobs_table
from benchmarks.jobs.scenarios import (
    Row,
    accept_only,
    flush,
    idle,
    inferlane_server,
    run_submitter,
    store_urls,
    under_load,
    wait_drained,
    write_bodies,
)
from inferlane.testing import ServiceError

log = logger("jobs-bench")


def filesystem(path: Path) -> str:
    """The filesystem type holding ``path`` (fsync cost decides both stores' submit latency)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 300 jobs, 20 idle jobs, a 300-job flood after 1 s quiet (under a minute)")
    p.add_argument("--jobs", type=int, default=None, help="jobs per accept/load run (default 2000; 300 with --quick)")
    p.add_argument("--idle-jobs", type=int, default=None, help="jobs in the idle run (default 100; 20 with --quick)")
    p.add_argument("--flood-jobs", type=int, default=None, help="jobs in the flood (default 1000; 300 with --quick)")
    p.add_argument("--quiet-seconds", type=float, default=None,
                   help="online traffic alone before the flood (default 3; 1 with --quick)")
    p.add_argument("--concurrency", type=int, default=16, help="submitting connections (default 16)")
    p.add_argument("--stores", default="sqlite,redis", help="comma-separated: sqlite, redis (default both)")
    p.add_argument("--redis-fsync", choices=["always", "everysec", "off"], default="always",
                   help="redis-server appendfsync; 'off' turns persistence off (default always, like SQLite's "
                        "synchronous=FULL)")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (300 if args.quick else 2000)
    args.idle_jobs = args.idle_jobs or (20 if args.quick else 100)
    args.flood_jobs = args.flood_jobs or (300 if args.quick else 1000)
    args.quiet_seconds = args.quiet_seconds or (1.0 if args.quick else 3.0)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not args.stores or not set(args.stores) <= {"sqlite", "redis"}:
        p.error("--stores takes sqlite and/or redis")
    return args


def run(args: argparse.Namespace, work: Path) -> tuple[list[Row], list[FloodRow]]:
    from inferlane.demo.models import synthetic_transactions, write_fraud_model

    jobs, idle_jobs, flood_jobs = args.jobs, args.idle_jobs, args.flood_jobs
    log(f"writing the fraud model in {work}")
    repo = work / "models"
    write_fraud_model(repo, rows=4000)
    x = synthetic_transactions(2 * jobs + idle_jobs + flood_jobs + 20 + 64, seed=3)[0]
    accept_bodies = write_bodies(work / "accept.jsonl", x[:jobs])
    load_bodies = write_bodies(work / "load.jsonl", x[jobs:2 * jobs])
    idle_x = x[2 * jobs:2 * jobs + idle_jobs]
    flood_x = x[2 * jobs + idle_jobs:2 * jobs + idle_jobs + flood_jobs]
    warm_bodies = write_bodies(work / "warm.jsonl", x[2 * jobs + idle_jobs + flood_jobs:-64])
    online_rows = x[-64:]
    rows: list[Row] = []
    floods: list[FloodRow] = []
    for store in args.stores:
        folder = work / store
        folder.mkdir()
        with store_urls(store, folder, args.redis_fsync) as (label, accept_url, url):
            log(f"{label}: accept-only server, {jobs} submits")
            with inferlane_server(repo, accept_url, folder / "accept.log", workers=0) as server:
                run_submitter(server.port, args.concurrency, warm_bodies)
                rows.append(accept_only(label, server.port, accept_bodies, jobs, args.concurrency))
            flush(accept_url)
            log(f"{label}: server with in-process workers: {idle_jobs} idle jobs, {jobs} at once, then a flood of "
                f"{flood_jobs} against online traffic")
            with inferlane_server(repo, url, folder / "workers.log", workers=None) as server:
                run_submitter(server.port, args.concurrency, warm_bodies)
                wait_drained(server.port)
                rows.append(idle(label, url, server.port, idle_x))
                rows.append(under_load(label, url, server.port, load_bodies, jobs, args.concurrency))
                floods.append(measure_flood(label, url, server.port, flood_x, online_rows, args.quiet_seconds, folder))
            flush(url)
    return rows, floods


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), load_average()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-jobs-"))
    fs = filesystem(work)
    try:
        rows, floods = run(args, work)
    except ServiceError as e:
        print(f"jobs benchmark: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(jobs_table(rows))
    print()
    print(f"online latency while a flood of jobs drains ({ONLINE_CONCURRENCY} online connections, the jobs "
          f"submitted over {SUBMIT_CONCURRENCY}; quiet: the same online traffic alone for {args.quiet_seconds:g} s "
          f"just before):")
    print(flood_table(floods))
    print(f"\ncommand: {command_line()}")
    print(machine_line(load_before, load_average(), time.time() - started) + f"; stores on {fs}")
    print("202 = the submit's HTTP round trip (client side); result = finished_at - created_at from the job record; "
          "seen = submit until a 2 ms poll saw it succeeded (client side); done jobs/s = jobs / (last finished_at - "
          "first created_at). Server: 4 in-process workers (default) or none (accept). p99 flood/quiet = online p99 "
          f"during the flood over online p99 quiet; target: the top of the online budget, {ONLINE_BUDGET_MS:g} ms. "
          f"Cores: {os.cpu_count()}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
