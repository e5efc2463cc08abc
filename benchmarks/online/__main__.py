"""``python -m benchmarks.online``: inferlane's online lane on default settings against a naive
Starlette + ONNX Runtime endpoint, the bare Python HTTP floor and raw ONNX Runtime, all measured in
the same run, the servers pinned to one core and wrk to another. See benchmarks/README.md.

    .venv/bin/python -m benchmarks.online --quick        # smoke run, under a minute
    .venv/bin/python -m benchmarks.online                # full run, about 5 minutes

Exit status 1 when a cell broke (wrk failed, a server did not start, any non-2xx, more than a
handful of socket errors); a missed target is reported, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.common import command_line, source_state, write_json
from benchmarks.online.cells import Cell, Serving, measure_cell
from benchmarks.online.config import BARE, CONCURRENCY, MODELS, Endpoint, Options, inferlane, naive
from benchmarks.online.machine import log
from benchmarks.online.models import request_bodies, write_repository
from benchmarks.online.raw import measure_raw
from benchmarks.online.report import COMPONENTS, report
from benchmarks.online.servers import bare_server, inferlane_server, log_name, naive_server
from benchmarks.online.targets import ideals, verdicts
from benchmarks.online.wrk import WrkFailed, lua_script, require_wrk
from inferlane.testing import ServiceError, log_tail, summarize_py_spy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.online",
        description=(
            "Benchmark inferlane's online lane on default settings, on one pinned core. For two random-weight "
            "ONNX MLPs (small 30-256-256-2, heavy 30-1024-1024-1024-2) it measures `inferlane serve` with "
            "batching on and off, a naive Starlette endpoint calling ONNX Runtime per request, and a bare "
            "Starlette endpoint returning a constant body, each pinned to --server-core, with wrk pinned to "
            "--client-core at concurrency 1, 8 and 64; plus raw ONNX Runtime in-process. Prints one table, "
            "the ideal throughput and the targets as PASS/MISS."),
        epilog="See benchmarks/README.md for what each row and column means.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 s per cell, a 1 s warm-up per endpoint, 0.3 s per raw figure (under a minute)")
    p.add_argument("--duration", type=int, default=None, metavar="SECONDS",
                   help="wrk seconds per measured run (whole seconds; default 10, or 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, metavar="SECONDS",
                   help="wrk seconds of warm-up before every cell (default 2, or 0 with --quick; an endpoint's "
                        "first cell always gets at least 1)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="measured runs per cell; the cell reports the median of each figure (default 1)")
    p.add_argument("--server-core", type=int, default=1, help="core the servers run on (default: 1)")
    p.add_argument("--client-core", type=int, default=0, help="core wrk runs on (default: 0)")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                   help="also write the results (and the table text) as JSON to PATH")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the server with py-spy (raw collapsed stacks into DIR) during every c=64 cell and "
                        "print where its time goes; py-spy runs on the client core and slightly perturbs those cells")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each cell, wait up to SECONDS for other processes on the machine to go idle "
                        "(below 10%% of a core); default 0: measure at once")
    p.add_argument("--retry-noisy", type=int, default=0, metavar="N",
                   help="measure a cell again, up to N times, while other processes use 10%% of a core or more "
                        "during it (default 0)")
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
    try:
        require_wrk()
    except WrkFailed as e:
        sys.exit(str(e))


def measure_server(opts: Options, server: contextlib.AbstractContextManager[Serving], endpoints: list[Endpoint],
                   script: Path) -> list[Cell]:
    """Every cell of ``endpoints`` against one server; when it does not start, every cell is
    broken with the reason."""
    cells: list[Cell] = []
    try:
        with server as serving:
            for endpoint in endpoints:
                for i, c in enumerate(CONCURRENCY):
                    log(f"{endpoint.label}, concurrency {c}")
                    profile = opts.py_spy / f"{endpoint.slug}-c{c}.txt" if opts.py_spy and c == 64 else None
                    cells.append(measure_cell(opts, endpoint, c, serving, script, first=i == 0, profile_to=profile))
    except ServiceError as e:
        log(f"a server did not start: {e}")
        done = {(c.endpoint, c.concurrency) for c in cells}
        cells += [Cell(ep, c, error=f"the server did not start: {str(e).splitlines()[0]}")
                  for ep in endpoints for c in CONCURRENCY if (ep, c) not in done]
    return cells


def measure_all(opts: Options, work: Path) -> tuple[dict[str, dict[str, float]], list[Cell]]:
    repo = work / "models"
    log(f"writing the model repository to {repo}")
    onnx = write_repository(repo)
    script = work / "load.lua"
    script.write_text(lua_script(request_bodies()), encoding="utf-8")
    log("raw ONNX Runtime")
    raw = measure_raw(opts.raw_s, opts.server_core, onnx)
    core = opts.server_core
    cells = measure_server(opts, bare_server(core, work), [BARE], script)
    for model, path in onnx.items():
        cells += measure_server(opts, naive_server(core, work, model, path), [naive(model)], script)
    cells += measure_server(opts, inferlane_server(core, work, repo),
                            [inferlane(m, batching) for m in MODELS for batching in (True, False)], script)
    for log_file in sorted({work / log_name(c.endpoint) for c in cells if c.broken}):
        log(f"a cell broke; the end of {log_file.name}:\n{log_tail(log_file, 3000)}")
    return raw, cells


def display_order(c: Cell) -> tuple[int, int, int, int]:
    servers = ["bare", "naive", "inferlane"]
    modes = ["constant", "per request", "batching on", "batching off"]
    models = ["-", *MODELS]
    return (models.index(c.endpoint.model), servers.index(c.endpoint.server), modes.index(c.endpoint.mode),
            c.concurrency)


def run(args: argparse.Namespace, opts: Options) -> int:
    check_machine(opts)
    # Between cells the benchmark only waits and reads /proc and /metrics; keep even that off the server core.
    os.sched_setaffinity(0, {opts.client_core})
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)), "host": os.uname().nodename,
        "cpus": os.cpu_count(), "load_start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "command": command_line(), "source": source_state()}
    if opts.py_spy is not None:
        opts.py_spy.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inferlane-bench-") as tmp:
        raw, cells = measure_all(opts, Path(tmp))
    cells.sort(key=display_order)
    meta["elapsed_s"] = time.time() - started
    meta["load_end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    ideal = ideals(cells, raw)
    checked = verdicts(cells, ideal)
    text = report(opts, cells, raw, ideal, checked, meta)
    print(text)
    if opts.py_spy is not None:
        for prof in (opts.py_spy / f"{c.endpoint.slug}-c64.txt" for c in cells if c.concurrency == 64):
            print(f"\npy-spy profile of the server process, {prof.stem}: {prof}")
            print("\n".join("  " + line for line in summarize_py_spy(prof, components=COMPONENTS)))
    if args.json_out is not None:
        write_json(args.json_out, {
            **meta, "options": asdict(opts), "client": "wrk -t1 (keep-alive, Lua POST bodies)",
            "cells": [c.figures() for c in cells], "raw_onnx": raw,
            "ideal": {m: asdict(d) | {"rps": d.rps} for m, d in ideal.items()},
            "targets": [{"figure": v.target.figure, "model": v.model, "value": v.value, "limit": v.target.limit,
                         "at_most": v.target.at_most, "verdict": v.word, "flagged_inputs": v.noisy} for v in checked],
            "table": text})
        log(f"wrote {args.json_out}")
    broken = [c for c in cells if c.broken]
    for c in broken:
        log(f"BROKEN: {c.endpoint.label} c={c.concurrency}: {c.non_2xx} non-2xx, {c.socket_errors} socket errors, "
            f"{c.requests} requests{', ' + c.error if c.error else ''}")
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 1 or (args.duration is not None and args.duration < 1):
        sys.exit("--repeat and --duration must be at least 1")
    opts = Options(
        warmup_s=args.warmup if args.warmup is not None else (0 if args.quick else 2),
        duration_s=args.duration if args.duration is not None else (1 if args.quick else 10),
        repeat=args.repeat, raw_s=0.3 if args.quick else 2.0,
        server_core=args.server_core, client_core=args.client_core, py_spy=args.py_spy,
        wait_quiet_s=args.wait_quiet, retry_noisy=args.retry_noisy)
    return run(args, opts)


if __name__ == "__main__":
    sys.exit(main())
