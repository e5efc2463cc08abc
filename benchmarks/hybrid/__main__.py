"""``python -m benchmarks.hybrid``: precomputed hits against live scoring of the same rows, with the
embedded SQLite store and with Redis, at 1,000 and 5,000 requests/s open loop; and the batch lane's
precompute throughput into each store against its Parquet output, on the same input.

    .venv/bin/python -m benchmarks.hybrid --quick     # smoke run: 20,000 rows, 1 s phases (about 35 s)
    .venv/bin/python -m benchmarks.hybrid             # 500,000 rows, 10 s phases (a few minutes)

In order: the model (the fraud demo model, one copy per store), the input (Parquet), the three
precompute jobs (unpinned), then ``inferlane serve`` pinned to the server core and, per store and rate,
one open-loop phase of hits (key only) and one of live requests (the same rows' inputs, no key) from
the client process on the other core (Redis runs there too). Exit status 1 when something broke (a
server did not start, a job did not write every row, a client failed); a missed target or an
unreached rate is reported in the tables, never a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.batch.measure import load_features, make_input
from benchmarks.common import command_line, load_average, logger, machine_line, source_state
from benchmarks.hybrid.latency import Phase, run_phase
from benchmarks.hybrid.precompute import Precompute, precompute
from benchmarks.hybrid.report import latency_table, precompute_table, targets_table
from benchmarks.hybrid.rig import MODELS, write_bodies, write_repository
from benchmarks.online.machine import others_cpu, wait_quiet
from benchmarks.rollout.load import LoadBroke
from benchmarks.rollout.rig import Cores
from inferlane.testing import (
    ServiceError,
    all_cpu_seconds,
    log_tail,
    redis_process,
    serve,
    start_py_spy,
    summarize_py_spy,
)

log = logger("hybrid-bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hybrid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 20,000 rows, 0.25 s warm-up and 0.75 s phases")
    p.add_argument("--rows", type=int, default=None, help="rows precomputed (default 500,000; 20,000 quick)")
    p.add_argument("--rates", default="1000,5000", help="open-loop requests/s (default 1000,5000)")
    p.add_argument("--phase", type=float, default=None, help="measured seconds per phase (default 10; 0.75 quick)")
    p.add_argument("--warm", type=float, default=None,
                   help="seconds before each measured window (default 2; 0.25 quick)")
    p.add_argument("--server-core", type=int, default=1, help="core the server runs on (default 1)")
    p.add_argument("--client-core", type=int, default=0,
                   help="core of the load client, Redis and this process (default 0)")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the server with py-spy (raw stacks into DIR) during the hit phases at the highest "
                        "rate and print where its time goes; py-spy runs on the client core")
    args = p.parse_args(argv)
    args.rows = args.rows or (20_000 if args.quick else 500_000)
    args.phase = args.phase or (0.75 if args.quick else 10.0)
    args.warm = args.warm or (0.25 if args.quick else 2.0)
    args.rates = [float(r) for r in args.rates.split(",") if r]
    return args


def run(args: argparse.Namespace, work: Path, cores: Cores) -> tuple[list[Precompute], list[Phase], float]:
    # The embedded store lives in the state folder: this process's jobs and the server share one.
    os.environ["INFERLANE_STATE_DIR"] = str(work / "state")
    (work / "redis").mkdir()
    with redis_process(work / "redis") as redis:
        redis_url = f"redis://127.0.0.1:{redis.port}/0"
        stores = {"sqlite": "store://fraud", "redis": f"{redis_url}?prefix=fraud"}
        models = write_repository(work / "models", stores)
        inp = work / "input"
        make_input(inp, args.rows)
        load_features(inp)  # read once: every job below reads it from the page cache
        bodies = write_bodies(inp, work, args.rows)
        log(f"precompute: {args.rows:,} rows into Parquet, {stores['sqlite']} and Redis (unpinned)")
        runs = [precompute("parquet", models["sqlite"], inp, str(work / "out-parquet"), args.rows),
                precompute("sqlite", models["sqlite"], inp, stores["sqlite"], args.rows),
                precompute("redis", models["redis"], inp, stores["redis"], args.rows)]
        for r in runs:
            log(f"  {r.output}: {r.rows_per_s:,.0f} rows/s")
        cores.pin_self()
        if cores.client is not None:
            os.sched_setaffinity(redis.proc.pid, {cores.client})
        env = {"INFERLANE_JOBS_WORKERS": "0"}
        with serve(work / "models", log_path=work / "server.log", prefix=cores.server_prefix, env=env) as server:
            wait_quiet(10.0 if args.quick else 60.0, {server.proc.pid, redis.proc.pid})
            before = all_cpu_seconds()
            phases = []
            for store in ("sqlite", "redis"):
                for rate in args.rates:
                    for kind in ("hit", "live"):
                        spy = None
                        if args.py_spy is not None and kind == "hit" and rate == max(args.rates):
                            args.py_spy.mkdir(parents=True, exist_ok=True)
                            spy = start_py_spy(server.proc.pid, args.py_spy / f"{store}-hit.txt",
                                               duration_s=int(args.warm + args.phase), prefix=cores.client_prefix)
                        phase = run_phase(server, MODELS[store], store, kind, bodies[kind], rate, args.warm,
                                          args.phase, work / f"{store}-{rate:.0f}-{kind}.json", cores.client_prefix)
                        if spy is not None:
                            spy.wait()
                        log(f"{store} {kind} at {rate:,.0f}/s: {phase.achieved:,.0f}/s answered, p50 "
                            f"{phase.p50_ms:.2f} ms, p99 {phase.p99_ms:.2f} ms, server CPU {phase.cpu_us:.0f} us "
                            f"per answer, {phase.failed} failed"
                            + (f" ({phase.broke})" if phase.broke else ""))
                        phases.append(phase)
            others = others_cpu(before, all_cpu_seconds(), {os.getpid(), server.proc.pid, redis.proc.pid})
    return runs, phases, others


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, load_before = time.time(), load_average()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-hybrid-"))
    cores = Cores.pick(args.server_core, args.client_core)
    try:
        runs, phases, others = run(args, work, cores)
    except (ServiceError, LoadBroke, RuntimeError) as e:
        print(f"hybrid benchmark: {e}", file=sys.stderr)
        if (work / "server.log").exists() and not isinstance(e, ServiceError):
            print(f"end of the server log:\n{log_tail(work / 'server.log')}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(latency_table(phases))
    print()
    print(precompute_table(runs))
    print()
    print(targets_table(phases, runs))
    if args.py_spy is not None:
        for prof in sorted(args.py_spy.glob("*-hit.txt")):
            print(f"\npy-spy, {prof.stem} at {max(args.rates):,.0f}/s:")
            print("\n".join("  " + line for line in summarize_py_spy(prof, top=25)))
    print(f"\ncommand: {command_line()}")
    print(f"{source_state()}; {args.rows:,} rows; phases {args.warm:g} s warm-up + {args.phase:g} s measured; "
          f"server on core {cores.server}, load client and Redis on core {cores.client}")
    print(machine_line(load_before, load_average(), time.time() - started)
          + f"; other processes used {others:.1f} CPU seconds during the phases (a quiet machine: about 0)")
    print("hit = key-only request answered from the store; live = the same row's inputs, no key, scored by the "
          "model. Latency: p50/p99 of the requests due in each measured window, from issue to the whole answer "
          "(a wait for one of the client's 64 connections counts); hit/s, live/s: answers completed per second in "
          "the window; cpu: the server's CPU per answer in the window (its capacity on one core is about 1e6 / cpu). "
          "Precompute: inferlane batch run end to end on all cores, same input and model.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
