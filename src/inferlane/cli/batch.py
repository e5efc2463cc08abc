"""``inferlane batch run`` and ``inferlane batch schedule``."""

from __future__ import annotations

import argparse
import sys

import orjson

from inferlane.cli.batch_args import EPILOG, add_job_arguments, job_from_args, print_report
from inferlane.core.errors import ConfigError

EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT), as shells report it (128 + 2)."""


def run(args: argparse.Namespace) -> int:
    from inferlane.lanes.batch import EXIT_OK, EXIT_PARTIAL, Interrupted, dry_run, run_batch

    if not args.job_id:
        raise ConfigError("--job-id is required: re-running with the same id resumes the job")
    job = job_from_args(args, args.job_id)
    if args.dry_run:
        report = dry_run(job)
        print("dry run: planned and checked; nothing written", file=sys.stderr)
    else:
        try:
            report = run_batch(job, on_start=lambda info: print(
                f"job {info['job_id']}: {info['shards']} shards, {info['already_done']} already done; "
                f"model {info['model']} version {info['version']}", file=sys.stderr))
        except Interrupted as e:
            print(e.message, file=sys.stderr)
            return EXIT_INTERRUPTED
    print_report(report)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    if args.dry_run:
        return EXIT_OK
    return EXIT_OK if report["status"] == "succeeded" else EXIT_PARTIAL


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("batch", help="score whole datasets, resumable, to files or databases")
    bsub = b.add_subparsers(dest="batch_command", required=True, metavar="ACTION")
    r = bsub.add_parser("run", help="run or resume one batch job", epilog=EPILOG,
                        description="Score a dataset with a model and write the outputs with the key.")
    add_job_arguments(r)
    r.add_argument("--job-id", required=True, help="job identity; the same id resumes")
    r.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    r.add_argument("--dry-run", action="store_true",
                   help="plan and check the inputs, the model's signature (on a sample of rows) and the output; "
                        "print the plan and write nothing")
    r.add_argument("--metrics-port", dest="job_metrics_port", type=int,
                   help="serve Prometheus metrics (rows, shards, forward time) on 127.0.0.1:PORT while it runs")
    r.add_argument("--pushgateway", metavar="URL",
                   help="push the job's metrics to a Prometheus Pushgateway when it ends, e.g. http://gw:9091")
    r.set_defaults(func=run)
    try:
        from inferlane.cli.schedule import add_schedule_parser
    except ImportError:  # pragma: no cover
        return
    add_schedule_parser(bsub)
