"""What ``inferlane batch run`` and ``inferlane batch schedule`` share: the job's flags, the job
built from them, and the report printed at the end."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from inferlane.cli.rollout import duration
from inferlane.core.errors import ConfigError

if TYPE_CHECKING:
    from inferlane.lanes.batch import BatchJob

EPILOG = ("Exit codes: 0 every shard scored and rejects within --max-reject-ratio; 1 unexpected "
          "error; 2 bad usage or configuration; 3 partial failure (a shard kept failing, or too "
          "many rejects). Re-run the same command to resume: finished shards are skipped.")


def parse_columns(values: list[str], *, globs: bool = True) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for v in values:
        if "=" not in v:
            raise ConfigError(f"--columns {v}: write INPUT=col1,col2,...{' (globs like f_* allowed)' if globs else ''}")
        name, cols = v.split("=", 1)
        out[name] = [c for c in cols.split(",") if c]
    return out


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder (<repo>/<name>, with model.yaml)")
    p.add_argument("--version", help="model version (default: the model's default version)")
    p.add_argument("--input", required=True,
                   help="file, folder, glob or s3://bucket/prefix of Parquet, CSV or JSONL")
    p.add_argument("--input-format", choices=["parquet", "csv", "jsonl"],
                   help="force the input format (default: from the file suffix)")
    p.add_argument("--output", required=True,
                   help="output folder (Parquet by default), sqlite:///file.db, postgresql://user@host/db, or a "
                        "key-value store for hybrid serving: store://NAME or redis://host:port/0?prefix=NAME")
    p.add_argument("--format", dest="output_format", default="parquet", choices=["parquet", "csv", "jsonl"],
                   help="file format of an output folder (default parquet)")
    p.add_argument("--table", help="table for database outputs (default predictions)")
    p.add_argument("--ttl", type=duration, metavar="DURATION",
                   help="a key-value store output's time to live, e.g. 24h or 90m (default: kept until overwritten)")
    p.add_argument("--key", required=True, help="key column(s), comma-separated")
    p.add_argument("--columns", action="append", default=[], metavar="INPUT=COLS",
                   help="columns feeding a model input, e.g. features=f0,f1 or features=f_* "
                        "(default: every non-key column)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="default local")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per forward pass (default 4096)")
    p.add_argument("--shard-rows", type=int, default=262_144,
                   help="rows per shard, the unit of resume (default 262144)")
    p.add_argument("--threads", type=int, default=0, help="model threads (default: the CPUs this process may use)")
    p.add_argument("--max-reject-ratio", type=float, default=0.01, help="default 0.01")
    p.add_argument("--retries", type=int, default=3, help="retries per shard for transient errors")
    p.add_argument("--cost-per-hour", type=float, help="machine cost, for the report's cost estimate")
    p.add_argument("--endpoint-url", help="object-store endpoint for s3:// (e.g. http://127.0.0.1:9000)")
    p.add_argument("--rejects-dir", help="where database outputs put rejects (default: next to a SQLite file, "
                                         "else under --state-dir)")
    p.add_argument("--state-dir", help="folder for a PostgreSQL or key-value store output's report and rejects "
                                       "(default $INFERLANE_STATE_DIR, else .inferlane in the current directory)")
    p.add_argument("--overwrite", action="store_true",
                   help="clear an output folder that holds only another inferlane job's output")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N rows (e.g. to try a job)")
    p.add_argument("--ray-actors", type=int, default=2, help="model actors for --engine ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def job_from_args(args: argparse.Namespace, job_id: str) -> BatchJob:
    from inferlane.lanes.batch import BatchJob

    return BatchJob(
        model=args.model, version=args.version, input=args.input, input_format=args.input_format,
        output=args.output, output_format=args.output_format, table=args.table,
        key=[k for k in args.key.split(",") if k], job_id=job_id, columns=parse_columns(args.columns),
        engine=args.engine, batch_size=args.batch_size, shard_rows=args.shard_rows, threads=args.threads,
        max_reject_ratio=args.max_reject_ratio, retries=args.retries, cost_per_hour=args.cost_per_hour,
        endpoint_url=args.endpoint_url, overwrite=args.overwrite, rejects_dir=args.rejects_dir,
        state_dir=args.state_dir, limit=args.limit, ttl_s=getattr(args, "ttl", None),
        progress=not args.quiet and sys.stderr.isatty(), ray_actors=args.ray_actors,
        metrics_port=getattr(args, "job_metrics_port", None), pushgateway=getattr(args, "pushgateway", None))


def print_report(report: dict[str, object]) -> None:
    keys = ["job_id", "status", "model", "model_version", "engine", "rows_read", "rows_written",
            "rows_rejected", "shards_total", "shards_done", "rows_read_this_run", "rows_written_this_run",
            "rows_rejected_this_run", "shards_committed", "shards_failed", "shards_skipped_already_done",
            "rows_read_earlier_runs", "retries", "duration_s", "rows_per_s", "estimated_cost", "report_path",
            # a dry run's plan
            "dry_run", "input_files", "output", "rows_planned", "shards_already_done", "shards_to_run",
            "rows_to_run", "sample_rows", "sample_rejected", "sample_reject_reasons"]
    width = max(len(k) for k in keys)
    for k in keys:
        if k in report:
            print(f"{k:<{width}}  {report[k]}")
    failures = report.get("failures") or []
    assert isinstance(failures, list)
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
