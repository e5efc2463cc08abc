"""``inferlane batch schedule``: run a batch job on a cron schedule with a deadline check."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from inferlane.cli.batch import EPILOG, add_job_arguments, job_from_args, print_report
from inferlane.core.errors import ConfigError

if TYPE_CHECKING:
    from inferlane.lanes.batch import BatchJob

log = logging.getLogger("inferlane.batch.schedule")


def _planned_rows(job: BatchJob) -> int:
    from inferlane.core.uri import filesystem_for
    from inferlane.lanes.batch.sources import list_inputs, plan_shards

    fs, path = filesystem_for(job.input, job.endpoint_url)
    return sum(s.rows for s in plan_shards(fs, list_inputs(job.input, fs, path, job.input_format), job.shard_rows))


def schedule(args: argparse.Namespace) -> int:
    from croniter import croniter
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from inferlane.lanes.batch import run_batch
    from inferlane.lanes.batch.schedule import append_history, estimate, parse_deadline, read_history

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not croniter.is_valid(args.cron):
        raise ConfigError(f"--cron {args.cron!r}: not a cron expression (e.g. '0 2 * * *')")
    name = args.name or args.job_id.split("{")[0].rstrip("-_") or "batch"
    history = Path(args.history or f".inferlane/schedule-{name}.jsonl")
    registry = CollectorRegistry()
    at_risk = Gauge("inferlane_batch_deadline_at_risk", "1 when the estimated finish is past the deadline",
                    ["job"], registry=registry)
    eta = Gauge("inferlane_batch_estimated_finish_timestamp_seconds", "Estimated finish (Unix time)",
                ["job"], registry=registry)
    last_ok = Gauge("inferlane_batch_last_success_timestamp_seconds", "Last successful run (Unix time)",
                    ["job"], registry=registry)
    if args.metrics_port is not None:
        start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cron = croniter(args.cron, datetime.now().astimezone())
    runs = 0
    while not stop.is_set() and (args.max_runs is None or runs < args.max_runs):
        fire = datetime.now().astimezone() if (args.run_now and runs == 0) else cron.get_next(datetime)
        log.info("next run of %s at %s", name, f"{fire:%Y-%m-%d %H:%M:%S %Z}")
        if stop.wait(max(0.0, (fire - datetime.now().astimezone()).total_seconds())):
            break
        fields = {"date": f"{fire:%Y-%m-%d}", "time": f"{fire:%H%M}", "name": name}
        job_id = args.job_id.format(**fields)
        run_args = argparse.Namespace(**{**vars(args), "input": args.input.format(**fields),
                                         "output": args.output.format(**fields)})
        job = job_from_args(run_args, job_id)
        start = datetime.now().astimezone()
        est = estimate(_planned_rows(job), read_history(history), start, parse_deadline(args.deadline, fire))
        at_risk.labels(name).set(1 if est.at_risk else 0)
        if est.finish is not None:
            eta.labels(name).set(est.finish.timestamp())
        if est.at_risk:
            log.warning("DEADLINE AT RISK for job %s: %s", job_id, est.describe())
        else:
            log.info("job %s: %s", job_id, est.describe())
        report = run_batch(job)
        print_report(report)
        append_history(history, report)
        if report["status"] == "succeeded":
            last_ok.labels(name).set(datetime.now().timestamp())
        runs += 1
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
    s.add_argument("--history", help="run history JSONL (default .inferlane/schedule-<name>.jsonl)")
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    s.add_argument("--run-now", action="store_true", help="run once immediately, then follow the schedule")
    s.add_argument("--max-runs", type=int, help="stop after this many runs (default: run forever)")
    s.set_defaults(func=schedule)


