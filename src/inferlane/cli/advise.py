"""``inferlane profile`` and ``inferlane advise``: measure a model, then choose how to run it.

Thin: the measuring, the rules and the cost math live in inferlane.advise; this module parses
flags, prints, and writes files.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from inferlane.core.duration import parse_duration
from inferlane.core.errors import ConfigError

if TYPE_CHECKING:
    from inferlane.advise.advisor import Advice
    from inferlane.advise.profile import Profile

EXIT_OK = 0

PROFILE_DESCRIPTION = """\
Measure MODEL_FOLDER on this machine: forward latency (p50, p99) and rows/s at each batch size,
memory per batch, the knee of the throughput curve (the smallest batch reaching 90 % of the peak
rows/s), and the batcher settings (max_batch_size, max_queue_delay_ms) for a p99 budget: the largest
batch up to the knee whose delay + 2 x forward p99 fits it. Model threads follow the same CPU rules
as the server (core/cpus.py). Progress goes to stderr. docs/choosing.md, "Profile a model".
"""

PROFILE_EPILOG = """\
example:
  inferlane profile ./models/fraud --p99-ms 50 --png fraud.png --json fraud-profile.json

exit codes: 0 measured; 2 bad usage, a model folder that does not load, a file that cannot be written.
"""

ADVISE_DESCRIPTION = """\
Recommend how to run a model: batch, hybrid, async jobs, stream or online, from the seeds' decision
framework (latency SLA, volume, freshness, inputs only at request time, cost), with the replicas,
machine-hours and cost per million predictions of every pattern side by side, computed from the
measured profile (run now, or --profile from inferlane profile --json). Says what would change the
answer and the steps from --current. docs/choosing.md.
"""

ADVISE_EPILOG = """\
example:
  inferlane advise --model ./models/fraud --requests-per-day 5e6 --peak-rps 300 --p99-ms 100 \\
      --freshness 1h --inputs-at-request-time no --price-per-hour 1.20 --spot-discount 0.7 --current online

exit codes: 0 advice given; 2 bad usage, a model folder that does not load, an unreadable --profile.
"""


def _number(low: float, *, strict: bool = True, below: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value < low or (strict and value == low)
        if not math.isfinite(value) or too_low or (below is not None and value >= below):
            bound = f"greater than {low:g}" if strict else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}{f' and below {below:g}' if below else ''}")
        return value
    return parse


def _freshness(text: str) -> float:
    if text.strip().lower() in ("0", "none", "live"):
        return 0.0
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; or 0 when the answer must reflect the request itself") from None


def _sizes(text: str) -> tuple[int, ...]:
    from inferlane.advise.profile import parse_batch_sizes

    try:
        return parse_batch_sizes(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(e.message.removeprefix(f"--batch-sizes {text!r}: ")) from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _measure(folder: Path, args: argparse.Namespace) -> Profile:
    from inferlane.advise.profile import DEFAULT_SIZES, profile_model

    if args.threads < 0:
        raise ConfigError(f"--threads must be 0 (the server's choice) or more, not {args.threads}")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder (expected <repo>/<name> with a model.yaml)")
    _progress(f"profiling {folder} ({args.seconds_per_size:g} s per batch size)")
    return profile_model(folder, args.version, sizes=args.batch_sizes or DEFAULT_SIZES,
                         seconds_per_size=args.seconds_per_size, threads=args.threads, progress=_progress)


def _write_json(target: str, doc: dict[str, object]) -> None:
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
    if target == "-":
        sys.stdout.write(data.decode())
        return
    try:
        Path(target).write_bytes(data)
    except OSError as e:
        raise ConfigError(f"--json {target}: cannot write it ({e.strerror})") from e


def run_profile(args: argparse.Namespace) -> int:
    from inferlane.advise.charts import profile_table, throughput_bars, write_png

    prof = _measure(args.model_folder, args)
    batching = prof.batching_for(args.p99_ms)
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"{prof.model} version {prof.version}: runtime {prof.runtime}, device {prof.device}, "
          f"{prof.threads_reason or f'{prof.threads} threads'}", file=out)
    print(profile_table(prof), file=out)
    print(file=out)
    print(throughput_bars(prof, batching), file=out)
    print(file=out)
    print(f"knee: batch {prof.knee.batch_size} ({prof.knee.rows_per_s:,.0f} rows/s, peak "
          f"{prof.peak.rows_per_s:,.0f} at batch {prof.peak.batch_size})", file=out)
    print(f"for p99 {args.p99_ms:g} ms: batching: {{max_batch_size: {batching.max_batch_size}, "
          f"max_queue_delay_ms: {batching.max_queue_delay_ms:g}}}", file=out)
    print(f"  {batching.reason}", file=out)
    if not batching.fits:
        print("  warning: the budget cannot be met on this machine", file=out)
    if args.png is not None:
        write_png(prof, args.png, batching)
        print(f"wrote {args.png}", file=sys.stderr)
    if args.json is not None:
        _write_json(args.json, {"profile": prof.to_dict(), "batching": {
            "p99_budget_ms": batching.p99_budget_ms, "max_batch_size": batching.max_batch_size,
            "max_queue_delay_ms": batching.max_queue_delay_ms, "worst_case_ms": batching.worst_case_ms,
            "fits": batching.fits, "reason": batching.reason}})
    return EXIT_OK


def _print_advice(a: Advice, args: argparse.Namespace) -> None:
    from inferlane.advise.charts import cost_bars
    from inferlane.advise.costs import money

    out = sys.stderr if args.json == "-" else sys.stdout
    p = a.profile
    print(f"{p.model} version {p.version} on {p.device}: knee batch {p.knee.batch_size}, peak "
          f"{p.peak.rows_per_s:,.0f} rows/s at batch {p.peak.batch_size}", file=out)
    print(f"\nrecommended: {a.pattern}", file=out)
    for r in a.reasons:
        print(f"  - {r}", file=out)
    w = a.workload
    spot = f", batch on spot at {1 - w.spot_discount:.0%} of it" if w.spot_discount else ""
    print(f"\nevery pattern at ${w.price_per_hour:g}/machine-hour{spot}, {w.requests_per_day:,.0f} predictions a day:",
          file=out)
    print(f"  {'pattern':<8}{'meets needs':<13}{'machines':>9}{'machine-h/day':>15}{'rows/day':>14}"
          f"{'$/day':>11}{'$/million':>11}", file=out)
    for c in a.costs:
        why = a.fits[c.pattern]
        print(f"  {c.pattern!s:<8}{'yes' if why is None else 'no':<13}{c.replicas:>9}{c.machine_hours_per_day:>15,.2f}"
              f"{c.rows_per_day:>14,.0f}{money(c.cost_per_day):>11}{money(c.cost_per_million):>11}", file=out)
    print(file=out)
    print(cost_bars(a), file=out)
    for c in a.costs:
        why = a.fits[c.pattern]
        print(f"  {c.pattern}: {c.sizing}{'' if why is None else f'; does not fit: {why}'}", file=out)
    print("\nwhat would change the answer:", file=out)
    for line in a.what_would_change or ("nothing short of a different workload",):
        print(f"  - {line}", file=out)
    print(f"\n{'migration from ' + str(args.current) if args.current else 'getting there'}:", file=out)
    for line in a.migration:
        print(f"  {line}", file=out)


def run_advise(args: argparse.Namespace) -> int:
    from inferlane.advise.advisor import advise
    from inferlane.advise.profile import load_profile
    from inferlane.advise.workload import Pattern, Workload

    if args.model is None and args.profile is None:
        raise ConfigError("advise needs --model (to profile it now) or --profile (a saved inferlane profile --json)")
    workload = Workload(requests_per_day=args.requests_per_day, peak_rps=args.peak_rps, p99_ms=args.p99_ms,
                        freshness_s=args.freshness, inputs_at_request_time=args.inputs_at_request_time,
                        price_per_hour=args.price_per_hour, spot_discount=args.spot_discount, keys=args.keys,
                        hybrid_miss_rate=args.hybrid_miss_rate)
    prof = load_profile(args.profile) if args.profile is not None else _measure(args.model, args)
    folder = str(args.model) if args.model is not None else f"./models/{prof.model}"
    advice = advise(workload, prof, current=Pattern(args.current) if args.current else None, model_folder=folder)
    _print_advice(advice, args)
    if args.json is not None:
        _write_json(args.json, advice.to_dict())
    return EXIT_OK


def _measuring_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", default=None, help="model version (default: the model's default version)")
    p.add_argument("--batch-sizes", type=_sizes, default=None, metavar="1,2,4,...",
                   help="batch sizes to measure, smallest first (default powers of two 1..1024; sizes over the "
                        "model's batching.max_batch_elements are skipped)")
    p.add_argument("--seconds-per-size", type=_number(0), default=0.2, metavar="S",
                   help="time spent per batch size (default 0.2; at least 3 and at most 1000 passes)")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="model threads (default: the server's choice from the usable CPUs, or model.yaml's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON (- for stdout)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from inferlane.advise.workload import INPUTS_AT, Pattern

    p = sub.add_parser("profile", help="measure a model: latency and rows/s by batch size, the knee, batcher settings",
                       description=PROFILE_DESCRIPTION, epilog=PROFILE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", type=Path, metavar="MODEL_FOLDER", help="<repo>/<name>, with model.yaml")
    p.add_argument("--p99-ms", type=_number(0), default=50.0, metavar="MS",
                   help="p99 budget the batcher settings are chosen for (default 50)")
    p.add_argument("--png", type=Path, default=None, metavar="PATH",
                   help="also draw the curve to a PNG (needs matplotlib: pip install 'inferlane[profile]')")
    _measuring_flags(p)
    p.set_defaults(func=run_profile)

    a = sub.add_parser("advise", help="recommend batch, hybrid, async jobs, stream or online, with the cost of each",
                       description=ADVISE_DESCRIPTION, epilog=ADVISE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", type=Path, default=None, metavar="MODEL_FOLDER",
                   help="model folder to profile now (and to name in the migration commands)")
    a.add_argument("--profile", type=Path, default=None, metavar="PATH",
                   help="a saved profile (inferlane profile --json) instead of measuring now")
    a.add_argument("--requests-per-day", type=_number(0), required=True, metavar="N",
                   help="predictions used per day, e.g. 5e6")
    a.add_argument("--peak-rps", type=_number(0), required=True, metavar="N",
                   help="highest rate of requests or events per second")
    a.add_argument("--p99-ms", type=_number(0), default=None, metavar="MS",
                   help="latency a caller accepts at p99; leave out when nobody waits on an answer "
                        "(a table read later, a topic)")
    a.add_argument("--freshness", type=_freshness, required=True, metavar="DURATION",
                   help="how old an answer may be when used: 30s, 5m, 1h, 1d; 0 when it must reflect the request")
    a.add_argument("--inputs-at-request-time", choices=INPUTS_AT, required=True,
                   help="yes: inputs exist only when the request or event arrives; no: known ahead, per key; "
                        "partly: a heavy part known ahead, a light part with the request")
    a.add_argument("--price-per-hour", type=_number(0), required=True, metavar="USD",
                   help="price of one machine like the profiled one, per hour")
    a.add_argument("--spot-discount", type=_number(0, strict=False, below=1), default=0.0, metavar="F",
                   help="discount of spot machines for batch, 0.7 = 70%% off (default 0: none)")
    a.add_argument("--keys", type=_number(0), default=None, metavar="N",
                   help="distinct keys batch and hybrid rescore each run (default: --requests-per-day)")
    a.add_argument("--hybrid-miss-rate", type=_number(0, strict=False), default=0.05, metavar="F",
                   help="share of hybrid requests the live model answers (default 0.05)")
    a.add_argument("--current", choices=[str(x) for x in Pattern], default=None,
                   help="the pattern you run today: the advice ends with the steps from it")
    _measuring_flags(a)
    a.set_defaults(func=run_advise)
