"""``python -m benchmarks.rollout``: a promotion, an automatic rollback and shadow mode against a real
``inferlane serve`` (pinned to one core) under open-loop load at half its measured capacity (the
client on another core). See benchmarks/README.md.

    .venv/bin/python -m benchmarks.rollout --quick     # smoke run, under a minute
    .venv/bin/python -m benchmarks.rollout             # full run, about a minute

In order, on one server: the capacity (closed loop, wrk), then shadow (stable 1, version 2 mirrored,
interleaved with no shadow), promote (1 → 2) and rollback (2 → 3, the bad version). Exit status 1
when something broke (the server did not start, a request hung, a rollout command failed); a missed
target is reported in the table, never a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import command_line, load_average, logger, machine_line, source_state
from benchmarks.online.machine import others_cpu, wait_quiet
from benchmarks.online.wrk import WrkFailed
from benchmarks.rollout.admin import Admin, AdminFailed
from benchmarks.rollout.load import LoadBroke, measure_capacity
from benchmarks.rollout.models import write_repository
from benchmarks.rollout.promote import run_promote
from benchmarks.rollout.report import raw_figures, rows, table
from benchmarks.rollout.rig import Cores, Rig, start_server
from benchmarks.rollout.rollback import run_rollback
from benchmarks.rollout.shadow import run_shadow
from inferlane.cli.rollout import percents
from inferlane.testing import ServiceError, WaitFailed, all_cpu_seconds, log_tail, summarize_py_spy

log = logger("rollout-bench")
PROFILE_PARTS = (("lanes/online.py", "online lane (incl. shadow copies)"), ("core/batcher.py", "batcher"),
                 ("rollout/", "rollout (router, stats, drift)"), ("transport/http", "HTTP transport"),
                 ("core/model.py", "model version"), ("prometheus_client", "metrics"), ("uvicorn", "uvicorn"),
                 ("asyncio", "asyncio"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 s capacity, 1 s windows, one pair of 2 s shadow phases (under a minute)")
    p.add_argument("--capacity-seconds", type=int, default=None, help="closed-loop capacity run (default 5; 2 quick)")
    p.add_argument("--window", type=float, default=None, help="rollout window, seconds (default 2; 1 quick)")
    p.add_argument("--steps", type=percents, default=[10.0, 50.0, 100.0], help="rollout steps (default 10,50,100)")
    p.add_argument("--max-p99-ratio", type=float, default=2.0,
                   help="the rollouts' p99 limit (default 2: versions 1 and 2 are the same code, and the server's tail "
                        "moves more than the default 1.3x between short windows at this load)")
    p.add_argument("--shadow", type=float, default=10.0, help="percent of requests mirrored (default 10)")
    p.add_argument("--pairs", type=int, default=None,
                   help="off/on pairs of shadow phases; a mode's p99 is the median of its phases' (default 4; 1 quick)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy the server during the first shadow on and off phases; raw stacks and summaries in DIR")
    p.add_argument("--phase", type=float, default=None, help="measured seconds per shadow phase (default 5; 2 quick)")
    p.add_argument("--server-core", type=int, default=1, help="core the server runs on (default 1)")
    p.add_argument("--client-core", type=int, default=0, help="core of the load client and this process (default 0)")
    args = p.parse_args(argv)
    args.capacity_seconds = args.capacity_seconds or (2 if args.quick else 5)
    args.window = args.window or (1.0 if args.quick else 2.0)
    args.pairs = args.pairs or (1 if args.quick else 4)
    args.phase = args.phase or (2.0 if args.quick else 5.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), load_average()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-rollout-"))
    cores = Cores.pick(args.server_core, args.client_core)
    cores.pin_self()
    try:
        repo = write_repository(work / "models")
        with start_server(repo, work, cores) as server:
            wait_quiet(10.0 if args.quick else 60.0, {server.proc.pid})
            others_before = all_cpu_seconds()
            capacity = measure_capacity(server.url, work, args.capacity_seconds, cores.client_prefix)
            rig = Rig(server, Admin(server.url, cores.client_prefix), capacity.rps / 2, work, cores)
            log(f"capacity {capacity.rps:,.0f} requests/s; the load runs at {rig.rate:,.0f}/s")
            log(f"shadow: {args.pairs} pair(s) of {args.phase:g} s phases, {args.shadow:g}% mirrored")
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            shadow = run_shadow(rig, args.shadow, args.pairs, args.phase, args.profile)
            log(f"promote: 1 -> 2, steps {args.steps}, window {args.window:g} s")
            promote = run_promote(rig, args.steps, args.window, args.max_p99_ratio)
            log("rollback: 2 -> 3 (fails on 20% of inputs)")
            rollback = run_rollback(rig, args.steps, args.window, args.max_p99_ratio)
            others = others_cpu(others_before, all_cpu_seconds(), {os.getpid(), server.proc.pid})
    except (ServiceError, LoadBroke, AdminFailed, WrkFailed, WaitFailed) as e:
        print(f"rollout benchmark: {e}", file=sys.stderr)
        if not isinstance(e, ServiceError):  # a ServiceError carries the end of the log already
            print(f"end of the server log:\n{log_tail(work / 'server.log')}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(rows(promote, rollback, shadow)))
    print()
    print(raw_figures(capacity, rig.rate, promote, rollback, shadow))
    if args.profile is not None:
        for mode in ("on", "off"):
            summary = "\n".join(summarize_py_spy(args.profile / f"shadow-{mode}.txt", components=PROFILE_PARTS))
            (args.profile / f"shadow-{mode}-summary.txt").write_text(summary + "\n")
            print(f"\nserver profile, shadow {mode} (py-spy, {args.profile / f'shadow-{mode}.txt'}):\n{summary}")
    print(f"\ncommand: {command_line()}")
    print(f"{source_state()}; steps {','.join(f'{s:g}' for s in args.steps)}, window {args.window:g} s, "
          f"max p99 ratio {args.max_p99_ratio:g}; server on core {cores.server}, client on core {cores.client}")
    print(machine_line(load_before, load_average(), time.time() - started)
          + f"; other processes used {others:.1f} CPU seconds during the measurements (a quiet machine: about 0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
