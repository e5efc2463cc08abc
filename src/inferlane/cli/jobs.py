"""``inferlane jobs``: submit | status | wait | list | cancel (HTTP client) and worker (standalone).

The client commands retry what the one retry rule calls transient (connection refused or reset,
timeouts, HTTP 503) a few times, then give up with a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import uuid
from pathlib import Path

import orjson

from inferlane.cli import options
from inferlane.cli.client import Call, print_json, server_client
from inferlane.core.errors import ConfigError
from inferlane.core.retry import RetryPolicy

FINAL = {"succeeded", "failed", "cancelled", "expired"}

WAIT_POLL = RetryPolicy(backoff_s=0.05, multiplier=1.5, max_backoff_s=2.0, jitter=0.1)
"""``wait``: the growing delay between two polls of the job (only its ``delay`` is used)."""


def _client(args: argparse.Namespace) -> contextlib.AbstractContextManager[Call]:
    """The server at ``--url``; every failure (the server unreachable, any 4xx or 5xx) is exit 2."""
    return server_client(args.url)


_print = print_json


def submit(args: argparse.Namespace) -> int:
    if args.input == "-":
        body = sys.stdin.buffer.read()
    elif args.input.startswith("s3://"):
        body = orjson.dumps({"input_uri": args.input})
    else:
        try:
            body = Path(args.input).read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read the request file {args.input}: {e.strerror or e}") from None
    if args.callback_url or args.output_uri:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise ConfigError(f"the request in {args.input} is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"the request in {args.input} must be a JSON object")
        if args.callback_url:
            doc["callback_url"] = args.callback_url
        if args.output_uri:
            doc["output_uri"] = args.output_uri
        body = orjson.dumps(doc)
    # A retried submit must not make a second job: without a key of the caller's, one of our own.
    headers = {"Content-Type": "application/json", "Idempotency-Key": args.idempotency_key or uuid.uuid4().hex}
    path = f"/v2/models/{args.model}" + (f"/versions/{args.version}" if args.version else "") + "/jobs"
    with _client(args) as call:
        job = call("POST", path, content=body, headers=headers)
    print(job["id"])
    return 0


def status(args: argparse.Namespace) -> int:
    with _client(args) as call:
        _print(call("GET", f"/v2/jobs/{args.job_id}"))
    return 0


def wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    with _client(args) as call:
        poll = 0
        while True:
            job = call("GET", f"/v2/jobs/{args.job_id}")
            if job["status"] in FINAL:
                _print(job)
                return 0 if job["status"] == "succeeded" else 3
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"job {args.job_id} is still {job['status']} after {args.timeout:g} s", file=sys.stderr)
                return 1
            poll += 1
            time.sleep(min(WAIT_POLL.delay(poll), left))


def listing(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    if args.model:
        params["model"] = args.model
    with _client(args) as call:
        jobs = call("GET", "/v2/jobs", params=params)["jobs"]
    for j in jobs:
        print(f"{j['id']}  {j['status']:<9}  {j['model']:<16} attempts {j['attempts']}/{j['max_attempts']}"
              + (f"  {j['error']}" if j.get("error") else ""))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as call:
        _print(call("DELETE", f"/v2/jobs/{args.job_id}"))
    return 0


def worker(args: argparse.Namespace) -> int:
    """Load the models, then run jobs from the store until SIGTERM (jobs in hand finish first)."""
    from inferlane.core import tracing
    from inferlane.lanes.jobs import run_worker
    from inferlane.server.settings import ServerSettings

    settings = ServerSettings.from_env(model_repository=args.repository, jobs_store=args.store,
                                       jobs_workers=args.concurrency, log_level=args.log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tracing.exporting(args.otlp_endpoint):
        return run_worker(settings.model_repository, settings.jobs_store, settings.jobs_settings(),
                          metrics_port=args.metrics_port, graceful_timeout_s=settings.graceful_timeout_s)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    j = sub.add_parser("jobs", help="asynchronous jobs: submit, poll, cancel, run workers")
    jsub = j.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = jsub.add_parser(name, help=help_text)
        p.add_argument("--url", default="http://127.0.0.1:8000", help="server URL (default http://127.0.0.1:8000)")
        return p

    s = client_parser("submit", "submit a job; prints its id")
    s.add_argument("model")
    s.add_argument("input", help="a V2 request body (JSON file, or - for stdin), or s3://... as input_uri")
    s.add_argument("--version")
    s.add_argument("--idempotency-key", help="the same key returns the same job")
    s.add_argument("--callback-url", help="POSTed the outcome, signed, when the job finishes")
    s.add_argument("--output-uri", help="folder or s3:// prefix for the result instead of inline")
    s.set_defaults(func=submit)
    st = client_parser("status", "show a job")
    st.add_argument("job_id")
    st.set_defaults(func=status)
    w = client_parser("wait", "wait for a job to finish; exit 0 if it succeeded, 3 if not, 1 on timeout")
    w.add_argument("job_id")
    w.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    w.set_defaults(func=wait)
    ls = client_parser("list", "list jobs, newest first")
    ls.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled", "expired"])
    ls.add_argument("--model")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=listing)
    c = client_parser("cancel", "cancel a queued job")
    c.add_argument("job_id")
    c.set_defaults(func=cancel)
    wk = jsub.add_parser("worker", help="run jobs from a store (no HTTP); scale out with more of these",
                         description="Loads every model in REPOSITORY and runs jobs from the store until "
                                     "SIGTERM. Many workers on many hosts share one Redis store.")
    wk.add_argument("repository", type=Path)
    wk.add_argument("--store", help="sqlite:///path.db or redis://host:port/db (default INFERLANE_JOBS_STORE)")
    wk.add_argument("--concurrency", type=int, default=None, help="jobs at once (default 4)")
    wk.add_argument("--metrics-port", type=int, help="Prometheus metrics on 127.0.0.1:PORT")
    wk.add_argument("--log-level", default=None, choices=["critical", "error", "warning", "info", "debug"])
    options.add_otlp(wk)
    wk.set_defaults(func=worker)
