"""``inferlane stream run``: score a Kafka topic or Redis stream continuously."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

import orjson

from inferlane.cli import options
from inferlane.cli.batch_args import parse_columns
from inferlane.cli.rollout import duration
from inferlane.core.errors import ConfigError
from inferlane.core.urls import redact_text

DESCRIPTION = """\
Consume JSON events from a Kafka topic or a Redis stream in a consumer group, score them in
micro-batches, write each output keyed by <key>@<model version>, and commit offsets (XACK) only
after the sink acknowledged the outputs. Malformed or unscorable events go to --dlq with their
error. Run more instances with the same --group to share the partitions.

Versions: without --version the lane follows the model's route in the server's rollout store
(--rollout-store): each event is scored on the version the server would choose for its --key, and a
promotion or rollback reaches the lane within about a second. --version pins one version.

Sources:  kafka://host:port/topic   redis://host:port[/db]/stream[?field=data]
Sinks:    kafka://host:port/topic   redis://host:port/stream   a folder (Parquet)
          sqlite:///file.db   postgresql://user@host/db   (--table, default predictions)
          store://NAME   redis://host:port/db?prefix=NAME   (a key-value store for the hybrid lane, --ttl)
Dead letters: kafka://...  redis://...  or a .jsonl file
"""

EPILOG = ("Exit codes: 0 stopped by SIGTERM/SIGINT (or --idle-exit) after finishing and committing "
          "in-flight batches; 1 a stage failed, the model stayed down past --model-retry-s or dead letters "
          "went over --max-dead-letter-ratio (nothing unwritten was committed); 2 bad usage or "
          "configuration. Example: inferlane stream run --model ./models/fraud --source "
          "kafka://127.0.0.1:9092/transactions --group fraud-scorer --sink kafka://127.0.0.1:9092/fraud-scores "
          "--dlq kafka://127.0.0.1:9092/fraud-dlq --key id --max-batch 512 --max-wait-ms 50")


def run(args: argparse.Namespace) -> int:
    from inferlane.core import tracing
    from inferlane.lanes.stream import StreamJob, StreamSettings, run_stream

    stop = threading.Event()  # from the start: a SIGTERM while the model loads is a clean stop too
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = StreamSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_inflight=args.max_inflight,
                              shutdown_timeout_s=args.shutdown_timeout, idle_exit_s=args.idle_exit,
                              log_interval_s=args.log_every, sink_retry_s=args.sink_retry_s,
                              model_retry_s=args.model_retry_s, max_dead_letter_ratio=args.max_dead_letter_ratio,
                              dead_letter_window=args.dead_letter_window, max_deliveries=args.max_deliveries)
    job = StreamJob(model=args.model, version=args.version, source=args.source, group=args.group, sink=args.sink,
                    dlq=args.dlq, key=args.key, columns=parse_columns(args.columns, globs=False), table=args.table,
                    ttl_s=args.ttl, settings=settings, start=args.start, consumer=args.consumer,
                    claim_idle_ms=args.claim_idle_ms, threads=args.threads, metrics_port=args.metrics_port,
                    metrics_host=args.metrics_host, state_dir=args.state_dir, rollout_store=args.rollout_store)
    try:
        with tracing.exporting(args.otlp_endpoint):
            report = run_stream(job, stop, on_start=lambda line: print(line, file=sys.stderr, flush=True))
    except ConfigError:
        raise
    except Exception as e:  # the stage already logged it with its traceback
        print(redact_text(f"stream stopped: {type(e).__name__}: {e}"), file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in report.items()), file=sys.stderr)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from e
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value
    return parse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("stream", help="score Kafka topics or Redis streams continuously, in micro-batches")
    ssub = s.add_subparsers(dest="stream_command", required=True, metavar="ACTION")
    r = ssub.add_parser("run", help="consume, score, write, commit; until SIGTERM", description=DESCRIPTION,
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--model", required=True, help="model folder (<repo>/<name>, with model.yaml)")
    r.add_argument("--version", help="score every event with this model version (default: follow the model's "
                                     "route in the rollout store, as the server routes)")
    r.add_argument("--rollout-store", help="the server's rollout store, whose route is followed without --version: "
                                           "sqlite:///path.db or redis://host:port/db[/prefix] (default "
                                           "$INFERLANE_ROLLOUT_STORE, else rollouts.db in the state folder)")
    r.add_argument("--source", required=True, help="kafka://host:port/topic or redis://host:port/stream")
    r.add_argument("--group", required=True, help="consumer group; instances in one group share the work")
    r.add_argument("--sink", required=True, help="kafka://, redis://, a folder, sqlite:///file.db or postgresql://")
    r.add_argument("--dlq", help="dead letters: kafka://, redis:// or a .jsonl file "
                                 "(default <state dir>/dead-letters.jsonl)")
    r.add_argument("--state-dir", help="the lane's local state: Kafka delivery counts for --max-deliveries and "
                                       "the default --dlq file (default stream/<group> in $INFERLANE_STATE_DIR, "
                                       "else in .inferlane)")
    r.add_argument("--key", required=True, help="event field that identifies an event (the output key)")
    r.add_argument("--columns", action="append", default=[], metavar="INPUT=FIELDS",
                   help="event fields feeding a model input, e.g. features=amount,age,hour "
                        "(default: a field named like the input)")
    r.add_argument("--table", help="table for database sinks (default predictions)")
    r.add_argument("--ttl", type=duration, metavar="DURATION",
                   help="key-value store sinks: the written values expire after this long, e.g. 2h")
    r.add_argument("--max-batch", type=_positive(int), default=512, help="events per micro-batch (default 512)")
    r.add_argument("--max-wait-ms", type=_positive(float), default=50.0,
                   help="close a micro-batch this long after its first event (default 50)")
    r.add_argument("--max-inflight", type=_positive(int), default=4,
                   help="micro-batches between consumer and commit before consumption pauses (default 4)")
    r.add_argument("--start", choices=["earliest", "latest"], default="earliest",
                   help="where a new group starts (default earliest)")
    r.add_argument("--consumer", help="Redis consumer name (default <host>-<pid>); reuse it after a restart to "
                                      "re-read this consumer's pending entries at once")
    r.add_argument("--claim-idle-ms", type=_positive(int), default=30_000,
                   help="Redis: take over entries pending this long at a dead consumer (default 30000)")
    r.add_argument("--threads", type=_positive(int), default=0,
                   help="model threads (default: the CPUs this process may use)")
    r.add_argument("--sink-retry-s", type=_positive(float), default=120.0,
                   help="retry transient sink failures this long, then stop with the error (exit 1; default 120)")
    r.add_argument("--model-retry-s", type=_positive(float), default=120.0,
                   help="while the model is down (not ready, or failing most of a batch for one reason) retry "
                        "the batch this long, consumption paused, then stop (exit 1; default 120)")
    r.add_argument("--max-dead-letter-ratio", type=_positive(float), default=0.5,
                   help="stop (exit 1, committing nothing past the last good batch) when more than this share "
                        "of the last --dead-letter-window events were dead-lettered (default 0.5; 1: never)")
    r.add_argument("--dead-letter-window", type=_positive(int), default=1000,
                   help="events over which --max-dead-letter-ratio is measured (default 1000)")
    r.add_argument("--max-deliveries", type=_positive(int), default=5,
                   help="dead-letter, unscored, an event delivered more often than this without being committed "
                        "(it crashed the lane each time; Kafka counts are kept in --state-dir; default 5)")
    r.add_argument("--shutdown-timeout", type=_positive(float), default=30.0,
                   help="seconds in-flight batches get to finish on SIGTERM or rebalance (default 30)")
    r.add_argument("--idle-exit", type=_positive(float),
                   help="exit 0 once no event arrived for this many seconds (drain a backlog, then stop)")
    r.add_argument("--metrics-port", type=_positive(int), help="serve Prometheus metrics on this port")
    r.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    r.add_argument("--log-every", type=_positive(float), default=10.0, help="seconds between progress lines")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    r.add_argument("--json", action="store_true", help="print the final report as one JSON line on stdout")
    options.add_otlp(r)
    r.set_defaults(func=run)

