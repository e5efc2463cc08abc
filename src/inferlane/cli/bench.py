"""``inferlane bench URL``: measure any V2 or V1 inference server with an honest load generator."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from inferlane.core.duration import parse_duration
from inferlane.core.errors import ConfigError

EXIT_OK, EXIT_FAILED = 0, 1

DESCRIPTION = """\
Send load to URL and report latency percentiles (p50/p95/p99/p99.9), throughput, answers by
status and requests that got no answer, by cause.

--rate RPS is an open loop: Poisson arrivals at that rate whether or not the server keeps up;
latency runs from each request's scheduled time, so a stall shows in p99 (no coordinated
omission), and the report says when the generator itself could not keep the schedule.
--concurrency N is a closed loop: N connections, one request in flight each (what wrk measures).
--sweep --p99-ms B finds the highest rate whose p99 meets B: short open-loop runs, doubling
from --rate (default 100), then bisecting.

URL is a server (http://host:port, with --model) or a full endpoint URL (with --body/--inputs).
Without a body, requests carry random values of the shapes and datatypes in GET /v2/models/MODEL.
"""

EPILOG = """\
examples:
  inferlane bench http://127.0.0.1:8000 --model fraud --rate 2000 --duration 10s
  inferlane bench http://127.0.0.1:8000 --model fraud --concurrency 32
  inferlane bench http://127.0.0.1:8000 --model fraud --sweep --p99-ms 50 --duration 3s
  inferlane bench http://127.0.0.1:8080 --model fraud --protocol v1 --body row.json --rate 500

exit codes: 0 measured; 1 no request was answered, or the sweep found no rate within the budget;
2 bad usage, a bad URL, a server that cannot be reached, an unknown model.
"""


def _duration(text: str) -> float:
    if text.strip() in ("0", "0s", "0ms"):
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
        return value
    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="load-test a V2 or V1 inference server (open or closed loop, rate sweep)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="http://host:port (with --model), or a full endpoint URL (with --body or --inputs)")
    p.add_argument("--model", default=None, help="model name: the path is /v2/models/MODEL/infer (or V1 :predict)")
    p.add_argument("--protocol", choices=["v2", "v1"], default="v2",
                   help="v2: POST /v2/models/M/infer; v1: POST /v1/models/M:predict (default v2)")
    body = p.add_mutually_exclusive_group()
    body.add_argument("--body", type=Path, default=None, metavar="FILE", help="send exactly this JSON body")
    body.add_argument("--inputs", default=None, metavar="JSON",
                      help="the V2 inputs list (or the V1 instances list) as JSON; bench wraps it")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=_positive(float), default=None, metavar="RPS",
                      help="open loop: Poisson arrivals at RPS requests per second (the sweep's start rate)")
    mode.add_argument("--concurrency", type=_positive(int), default=None, metavar="N",
                      help="closed loop: N connections, one request in flight each")
    p.add_argument("--duration", type=_duration, default=10.0, metavar="TIME",
                   help="measured time per run, such as 10s or 500ms (default 10s; per step with --sweep)")
    p.add_argument("--warmup", type=_duration, default=2.0, metavar="TIME",
                   help="load sent before measuring, not counted (default 2s; 0 for none)")
    p.add_argument("--connections", type=_positive(int), default=None, metavar="N",
                   help="open loop: keep-alive connections requests are spread over (default 64); a request "
                        "that finds them all busy waits for one, and the wait counts in its latency")
    p.add_argument("--processes", type=_positive(int), default=1, metavar="P",
                   help="generator processes sharing the rate and connections (default 1; one process "
                        "sends a few tens of thousands of requests/s at most)")
    p.add_argument("--timeout", type=_duration, default=10.0, metavar="TIME",
                   help="a request with no answer after this counts as a timeout (default 10s)")
    p.add_argument("--sweep", action="store_true", help="find the highest rate whose p99 meets --p99-ms")
    p.add_argument("--p99-ms", type=_positive(float), default=None, metavar="MS", help="the sweep's p99 budget")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the figures as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from inferlane.bench.report import render
    from inferlane.bench.run import Plan, measure
    from inferlane.bench.target import resolve

    if args.sweep != (args.p99_ms is not None):
        raise ConfigError("--sweep and --p99-ms go together: --sweep --p99-ms 50")
    if args.sweep and args.concurrency is not None:
        raise ConfigError("--sweep varies the rate (open loop); --concurrency does not apply")
    if not args.sweep and args.rate is None and args.concurrency is None:
        raise ConfigError("give --rate RPS (open loop), --concurrency N (closed loop) or --sweep --p99-ms B")
    resolved = resolve(args.url, model=args.model, protocol=args.protocol, body=args.body, inputs=args.inputs,
                       timeout_s=args.timeout)
    plan = Plan(rate=args.rate or (100.0 if args.sweep else None), concurrency=args.concurrency,
                duration_s=args.duration, warmup_s=args.warmup, connections=args.connections,
                processes=args.processes)
    print(f"body: {resolved.body_source}", flush=True)
    if args.sweep:
        return _sweep(args, resolved, plan)
    report = measure(resolved, plan)
    print(render(report))
    _write_json(args.json, report.to_json())
    return EXIT_OK if report.completed else EXIT_FAILED


def _sweep(args: argparse.Namespace, resolved: Any, plan: Any) -> int:
    from inferlane.bench.sweep import Step, sweep

    print(f"sweep: p99 budget {args.p99_ms:g} ms, {args.duration:g} s per step after {args.warmup:g} s warm-up")
    print(f"{'rate':>10}  {'sent':>10}  {'p50':>9}  {'p99':>9}  {'errors':>7}  verdict")

    def show(s: Step) -> None:
        r = s.report
        print(f"{s.rate:>10,.0f}  {r.sent_rate or 0:>10,.0f}  {r.latency_ms['p50']:>7.2f}ms  {r.p99_ms:>7.2f}ms  "
              f"{r.error_share:>7.1%}  {'pass' if s.passed else 'FAIL'}: {s.why}", flush=True)

    result = sweep(resolved, args.p99_ms, plan, plan.rate, on_step=show)
    if result.best_rate is None:
        print(f"no rate tried met p99 <= {args.p99_ms:g} ms")
    else:
        print(f"highest rate meeting p99 <= {args.p99_ms:g} ms: {result.best_rate:,.0f} req/s")
    if result.limited_by_generator:
        print("! the generator, not the server, set the limit: rerun with --processes to find the server's")
    _write_json(args.json, {"p99_budget_ms": args.p99_ms, "best_rate": result.best_rate,
                            "limited_by_generator": result.limited_by_generator,
                            "steps": [{"rate": s.rate, "passed": s.passed, "why": s.why, "report": s.report.to_json()}
                                      for s in result.steps]})
    return EXIT_OK if result.best_rate is not None else EXIT_FAILED


def _write_json(path: Path | None, doc: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {path}", file=sys.stderr)
