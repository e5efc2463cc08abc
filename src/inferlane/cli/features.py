"""``inferlane features materialize``: store a table's features by key for online serving."""

from __future__ import annotations

import argparse
import sys

import orjson

from inferlane.cli.rollout import duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3

DESCRIPTION = """\
Read SOURCE and store, per key, its numeric columns as the features a model with a features:
section reads at request time (docs/hybrid.md, "Online features"). Nulls are left out (the
field's default applies when serving); columns that are not numeric are skipped and listed.
A re-run overwrites: the newest run wins, per key.

SOURCE: a Parquet, CSV or JSONL file, folder or glob (local or s3://),
        sqlite:///file.db?table=T  or  postgresql://user@host/db?table=T (or ?table=schema.T)
--store: store://NAME (SQLite in the state folder, $INFERLANE_STATE_DIR, where the server reads)
         or redis://host:port/db?prefix=NAME
"""

EPILOG = """\
example:
  inferlane features materialize data/user_features.parquet --key user_id \\
      --store store://fraud-features --columns avg_amount_7d,txn_count_24h --ttl 7d

exit codes: 0 every row stored; 1 unexpected error (the store failed); 2 bad usage, a missing key
column, an unknown or non-numeric --columns column, an unreadable or empty source; 3 some rows
rejected (a null, non-text or oversized key, a cell that is not a number), the rest stored.
"""


def materialize(args: argparse.Namespace) -> int:
    from inferlane.lanes.batch.features import Materialization
    from inferlane.lanes.batch.features import materialize as run
    from inferlane.store.kv import StoreError

    job = Materialization(source=args.source, key=[k for k in args.key.split(",") if k], store=args.store,
                          columns=[c for c in args.columns.split(",") if c] if args.columns else None,
                          ttl_s=args.ttl, batch_rows=args.batch_rows, input_format=args.input_format,
                          endpoint_url=args.endpoint_url, progress=not args.no_progress and sys.stderr.isatty())
    try:
        report = run(job)
    except StoreError as e:
        print(f"features materialize: {e.message}", file=sys.stderr)
        return EXIT_FAILED
    lines = {"source": report.source, "store": report.store, "columns": ", ".join(report.columns),
             "rows_read": report.rows_read, "keys_written": report.keys_written,
             "keys_older": f"{report.keys_older} (the store held a newer value)" if report.keys_older else 0,
             "rows_rejected": report.rows_rejected, "duration_s": round(report.duration_s, 3),
             "rows_per_s": round(report.rows_per_s)}
    width = max(len(k) for k in lines)
    for k, v in lines.items():
        print(f"{k:<{width}}  {v}")
    for name, why in report.skipped_columns.items():
        print(f"skipped column {name!r}: {why}", file=sys.stderr)
    for reject in report.rejects:
        print(f"rejected: {reject}", file=sys.stderr)
    if report.rows_rejected > len(report.rejects):
        print(f"rejected: ... {report.rows_rejected - len(report.rejects)} more rows", file=sys.stderr)
    if args.json:
        doc = {**{k: getattr(report, k) for k in report.__slots__}, "rows_per_s": report.rows_per_s}
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    return EXIT_PARTIAL if report.rows_rejected else EXIT_OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = sub.add_parser("features", help="online features: store a table's features by key for serving")
    fsub = f.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    m = fsub.add_parser("materialize", help="store the numeric columns of a table, per key, in a key-value store",
                        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("source", metavar="SOURCE", help="file, folder, glob or s3:// of Parquet, CSV or JSONL; "
                                                    "or sqlite:///file.db?table=T, postgresql://...?table=T")
    m.add_argument("--key", required=True, help="key column(s), comma-separated (joined with | in the key)")
    m.add_argument("--store", required=True, help="store://NAME or redis://host:port/db?prefix=NAME")
    m.add_argument("--columns", metavar="A,B,C", help="the feature columns (default: every numeric column but the key)")
    m.add_argument("--ttl", type=duration, metavar="DURATION",
                   help="expire the stored features after this long, e.g. 7d (default: kept until overwritten)")
    m.add_argument("--batch-rows", type=int, default=65_536, metavar="N",
                   help="rows read and written at once (default 65536)")
    m.add_argument("--input-format", choices=["parquet", "csv", "jsonl"],
                   help="force the file format (default: from the file suffix)")
    m.add_argument("--endpoint-url", help="object-store endpoint for s3:// (e.g. http://127.0.0.1:9000)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    m.set_defaults(func=materialize)
