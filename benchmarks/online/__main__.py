"""``python -m benchmarks.online``: the online lane on one pinned core, against the Python HTTP floor
and raw ONNX Runtime measured in the same run. See benchmarks/README.md for every row and column.

    .venv/bin/python -m benchmarks.online --quick        # smoke run, under a minute
    .venv/bin/python -m benchmarks.online                # full run, about 4 minutes

Exit status 1 when a cell broke (the driver failed, or the server answered anything but 200); a
missed target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, source_state, write_json
from benchmarks.online.cells import measure_bare, measure_inferlane, measure_raw
from benchmarks.online.config import CONCURRENCY, REFERENCE, Options, build_repository
from benchmarks.online.machine import log, wait_quiet
from benchmarks.online.report import COMPONENTS, compute_ideal, report
from inferlane.testing import ServiceError, summarize_py_spy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.online",
        description=(
            "Benchmark inferlane's online lane on one pinned core. Builds two random-weight MLPs "
            "(small 30-256-256-2, heavy 30-1024-1024-1024-2), each with dynamic batching on and off, serves "
            "them with `inferlane serve` pinned to --server-core, and drives single-row V2 JSON requests from a "
            "load driver pinned to --client-core at concurrency 1, 16 and 64. Baselines in the same run: a bare "
            "Starlette endpoint returning a constant body (the Python HTTP floor) and raw in-process ONNX "
            "Runtime at batch 64. Prints one table, the ideal throughput and the pass/miss targets."),
        epilog="See benchmarks/README.md for what each row and column means.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 0.3 s warm-up and 1 s per cell, 0.3 s per raw figure (under a minute)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per cell (default 10, or 1 with --quick)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of warm-up before each cell (default 2, or 0.3 with --quick)")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                   help="concurrency levels: connections, one request in flight each (default: 1 16 64)")
    p.add_argument("--server-core", type=int, default=1, help="core the servers run on (default: 1)")
    p.add_argument("--client-core", type=int, default=0, help="core the load driver runs on (default: 0)")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                   help="also write the results (and the table text) as JSON to PATH")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the server process with py-spy (raw collapsed stacks into DIR) during every "
                        "highest-concurrency cell and print where its time goes; py-spy runs on the client core "
                        "and slightly perturbs those cells")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each cell, wait up to SECONDS for other processes on the machine to go idle "
                        "(below 10%% of a core); default 0: measure at once")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                   help="measure a cell again, up to N times, when it looks disturbed: other processes used 10%% "
                        "of a core or more, TCP retransmits, or a stalled bare endpoint (default 0)")
    p.add_argument("--verbose", action="store_true", help="print the server's log at the end")
    return p


def check_machine(opts: Options) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for core in (opts.server_core, opts.client_core):
        if core not in cpus:
            sys.exit(f"core {core} is not available to this process (cores: {cpus})")
    if opts.server_core == opts.client_core:
        sys.exit("--server-core and --client-core must differ")
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is required to pin the processes")


def run(args: argparse.Namespace, opts: Options) -> int:
    check_machine(opts)
    # The benchmark only waits and reads /proc and /metrics between and around cells; keep even
    # that off the server core.
    os.sched_setaffinity(0, {opts.client_core})
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "host": os.uname().nodename,
        "cpus": os.cpu_count(), "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": command_line(), "source": source_state()}
    if opts.py_spy is not None:
        opts.py_spy.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferlane-bench-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        log(f"writing the model repository to {repo}")
        build_repository(repo)
        wait_quiet(opts)
        log("raw ONNX Runtime throughput")
        raw = measure_raw(opts, repo)
        cells = measure_bare(opts, work)
        cells += measure_inferlane(opts, repo, work)
        if opts.verbose:
            sys.stderr.write((work / "server.log").read_text(errors="replace"))
    meta["elapsed_s"] = time.time() - started
    meta["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ideal = compute_ideal(cells, raw, max(opts.concurrency))
    text = report(opts, cells, raw, ideal, meta)
    print(text)
    if opts.py_spy is not None:
        for prof in sorted(opts.py_spy.glob("*.txt"), key=lambda p: p.stat().st_mtime):
            print(f"\npy-spy profile of the server process: {prof}")
            print("\n".join("  " + line for line in summarize_py_spy(prof, components=COMPONENTS)))
    if args.json_out is not None:
        write_json(args.json_out, {
            **meta, "options": asdict(opts), "client": "inferlane.demo.loadgen.run_load (asyncio, uvloop)",
            "cells": [asdict(c) | {"client_bound": c.client_bound, "noisy": c.noisy, "stalled": c.stalled}
                      for c in cells],
            "raw_onnx": raw, "ideal": ideal, "table": text,
            "reference": [{"server": n, "rps": r, "p99_ms": p} for n, r, p in REFERENCE]})
        log(f"wrote {args.json_out}")
    broken = [c for c in cells if c.broken]
    for c in broken:
        log(f"BROKEN: {c.section} {c.model} {c.mode} c={c.concurrency}: statuses {c.statuses}, {c.exception or ''}")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opts = Options(
        warmup_s=args.warmup if args.warmup is not None else (0.3 if args.quick else 2.0),
        duration_s=args.duration if args.duration is not None else (1.0 if args.quick else 10.0),
        raw_s=0.3 if args.quick else 2.0,
        server_core=args.server_core, client_core=args.client_core, concurrency=tuple(args.concurrency),
        py_spy=args.py_spy, verbose=args.verbose, wait_quiet_s=args.wait_quiet, retry_noisy=args.retry_noisy)
    try:
        return run(args, opts)
    except ServiceError as e:
        print(f"online benchmark: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
