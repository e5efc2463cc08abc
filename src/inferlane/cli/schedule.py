"""``inferlane batch schedule``: run a batch job on a cron schedule with a deadline check."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from inferlane.cli.batch_args import EPILOG, add_job_arguments, job_from_args, print_report


def schedule(args: argparse.Namespace) -> int:
    from inferlane.core.metrics import Metrics
    from inferlane.lanes.batch.schedule import Schedule, run_schedule

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    name = args.name or args.job_id.split("{")[0].rstrip("-_") or "batch"
    metrics = Metrics()
    if args.metrics_port is not None:
        metrics.serve(args.metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    plan = Schedule(cron=args.cron, job=job_from_args(args, args.job_id), deadline=args.deadline, name=name,
                    history=Path(args.history) if args.history else None, run_now=args.run_now,
                    max_runs=args.max_runs)
    run_schedule(plan, stop, metrics=metrics, on_report=print_report)
    return 0


def add_schedule_parser(bsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = bsub.add_parser(
        "schedule", help="run a batch job on a cron schedule, warning early when a deadline is at risk",
        epilog=EPILOG,
        description="Runs the job at each cron time. Before each run it estimates the finish time from "
                    "the last runs' throughput and logs a WARNING (and sets the "
                    "inferlane_batch_deadline_at_risk gauge) when the deadline would be missed.")
    add_job_arguments(s)
    s.add_argument("--cron", required=True, help="cron expression in local time, e.g. '0 2 * * *'")
    s.add_argument("--deadline", help="time of day the run must finish by, e.g. 08:00")
    s.add_argument("--job-id", default="{name}-{date}",
                   help="job id template: {date} {time} {name} (default {name}-{date}); --input and "
                        "--output take the same fields, e.g. s3://lake/tx/{date}/")
    s.add_argument("--name", help="schedule name (history file and metric label)")
    s.add_argument("--history", help="run history JSONL (default "
                   "schedule-<name>.jsonl in $INFERLANE_STATE_DIR, else in .inferlane)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    s.add_argument("--run-now", action="store_true", help="run once immediately, then follow the schedule")
    s.add_argument("--max-runs", type=int, help="stop after this many runs (default: run forever)")
    s.set_defaults(func=schedule)


