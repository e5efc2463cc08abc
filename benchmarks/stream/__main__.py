"""``python -m benchmarks.stream``: events/s and end-to-end latency of the stream lane through Kafka
(Tansu, in-memory) and Redis Streams, against the raw model in the same run.

    .venv/bin/python -m benchmarks.stream                    # 1M events, small and heavy MLP (about 7 min)
    .venv/bin/python -m benchmarks.stream --quick            # smoke run (under a minute)
    .venv/bin/python -m benchmarks.stream --transports kafka --models small --events 200000

The services (a Tansu broker, a redis-server) start in a temporary folder deleted at the end.
Targets: at least 100,000 events/s through Kafka with the small model (backlog, max-wait 50), and
p99 under 250 ms (paced, max-wait 50). Exit status 1 when a run failed or lost events; a missed
target is reported, not a failure. See benchmarks/README.md for every row and column.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import command_line, load_average, machine_line, write_json
from benchmarks.stream.events import Events
from benchmarks.stream.kafka_transport import Kafka
from benchmarks.stream.lane import Transport
from benchmarks.stream.phases import Ctx, backlog_runs, log, paced_runs, raw_limit
from benchmarks.stream.redis_transport import Redis
from benchmarks.stream.report import Row, table
from inferlane.testing import ServiceError, summarize_py_spy

MODELS = {"small": (256, 256), "heavy": (1024, 1024, 1024)}
DEFAULT_RATES = "small=20000,heavy=5000"


def parse_rates(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, rate = part.partition("=")
        if name.strip() not in MODELS or not rate:
            raise argparse.ArgumentTypeError(f"{part!r}: write MODEL=EVENTS_PER_S, e.g. small=20000")
        out[name.strip()] = float(rate)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.stream", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See benchmarks/README.md for what each row and column means.")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the small model at max-wait 50 on both transports, 20,000 backlog events, "
                        "a 2 s paced phase, 1 s raw (under a minute)")
    p.add_argument("--events", type=int, default=None, help="backlog events (default 1,000,000; 20,000 with --quick)")
    p.add_argument("--models", default=None, help="comma-separated: small, heavy (default both; small with --quick)")
    p.add_argument("--transports", default="kafka,redis", help="comma-separated: kafka, redis (default both)")
    p.add_argument("--phases", default="backlog,paced", help="comma-separated: backlog, paced (default both)")
    p.add_argument("--max-waits", default=None,
                   help="--max-wait-ms settings, comma-separated (default 5,50; 50 with --quick)")
    p.add_argument("--max-batch", type=int, default=512, help="--max-batch of the lane and the raw batch (default 512)")
    p.add_argument("--partitions", type=int, default=4, help="partitions per Kafka topic (default 4)")
    p.add_argument("--rates", type=parse_rates, default=parse_rates(DEFAULT_RATES),
                   help=f"paced production rate per model, events/s (default {DEFAULT_RATES})")
    p.add_argument("--latency-seconds", type=float, default=None,
                   help="measured seconds of each paced phase, after 1 s of warm-up (default 10; 2 with --quick)")
    p.add_argument("--raw-seconds", type=float, default=None,
                   help="seconds of the raw model limit (default 3; 1 with --quick)")
    p.add_argument("--lane-args", type=shlex.split, default=[], metavar="ARGS",
                   help="more `inferlane stream run` flags for every lane, e.g. --lane-args='--threads 1'")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                   help="also write the rows, the machine and the table text as JSON to PATH")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR",
                   help="record the lane with py-spy during every backlog drain (raw stacks into DIR) and print "
                        "where its time goes; py-spy takes some CPU from the 2 cores")
    args = p.parse_args(argv)
    args.events = args.events or (20_000 if args.quick else 1_000_000)
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 10.0)
    args.raw_seconds = args.raw_seconds or (1.0 if args.quick else 3.0)
    args.warmup = 1.0
    args.max_waits = [float(w) for w in (args.max_waits or ("50" if args.quick else "5,50")).split(",")]
    args.models = [m.strip() for m in (args.models or ("small" if args.quick else "small,heavy")).split(",")
                   if m.strip()]
    args.transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    args.phases = [t.strip() for t in args.phases.split(",") if t.strip()]
    for what, given, known in (("--models", args.models, tuple(MODELS)),
                               ("--transports", args.transports, ("kafka", "redis")),
                               ("--phases", args.phases, ("backlog", "paced"))):
        if not given or not set(given) <= set(known):
            p.error(f"{what} takes {', '.join(known)}")
    args.rates = {**parse_rates(DEFAULT_RATES), **args.rates}
    return args


def run(args: argparse.Namespace, work: Path) -> list[Row]:
    from inferlane.demo.models import write_mlp_model

    rows: list[Row] = []
    models = {name: write_mlp_model(work / "models", name, MODELS[name]) for name in args.models}
    raw = {}
    for name, model_dir in models.items():
        done, raw[name] = raw_limit(model_dir, args.max_batch, args.raw_seconds)
        rows.append(Row("raw model", name, "-", None, f"batches of {args.max_batch}", done,
                        events_per_s=raw[name], x_raw=1.0))
        log(f"raw {name}: {raw[name]:,.0f} rows/s at batch {args.max_batch}")
    ctx = Ctx(work, Events(), args)
    for kind in args.transports:
        folder = work / kind
        folder.mkdir()
        transport: Transport = Kafka(folder, args.partitions) if kind == "kafka" else Redis(folder)
        with transport.running() as t:
            if "backlog" in args.phases:
                rows += backlog_runs(ctx, t, models, raw)
            if "paced" in args.phases:
                rows += paced_runs(ctx, t, models)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    started, load_before = time.time(), load_average()
    work = Path(tempfile.mkdtemp(prefix="inferlane-bench-stream-"))
    try:
        rows = run(args, work)
    except ServiceError as e:
        print(f"stream benchmark: {e} (or leave that transport out with --transports)", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows)
    print(text)
    elapsed = time.time() - started
    print(f"\ncommand: {command_line()}")
    print(machine_line(load_before, load_average(), elapsed))
    print(f"lane: inferlane stream run --max-batch {args.max_batch} --max-wait-ms W --threads 0 (every core); "
          f"Kafka topics with {args.partitions} partitions on Tansu (memory storage), redis-server without "
          "persistence, all on this machine. events/s (backlog) = the lane's outputs / busy_s (first event "
          "consumed -> last output acknowledged; paced: outputs after the first write / first -> last write); "
          "×raw = that / the model alone at the same batch size; p50/p99 (paced) = "
          "scored_at_ms - event_time_ms per output, first second excluded; lane cpu / broker cpu = CPU time "
          "over wall time while outputs were being written (100% = one core).")
    if args.py_spy is not None:
        for prof in sorted(args.py_spy.glob("*.txt"), key=lambda f: f.stat().st_mtime):
            print(f"\npy-spy profile of the lane: {prof}")
            print("\n".join("  " + line for line in summarize_py_spy(prof, top=10)))
    if args.json_out is not None:
        write_json(args.json_out, {
            "command": command_line(), "cores": os.cpu_count(), "load_before": load_before,
            "load_after": load_average(), "elapsed_s": round(elapsed, 1), "rows": [asdict(r) for r in rows],
            "table": text, "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}})
        log(f"wrote {args.json_out}")
    return 0 if all(r.complete for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
