"""``inferlane bench``: an honest HTTP load generator for any V2 or V1 inference server.

    resolved = resolve("http://127.0.0.1:8000", model="fraud")
    report = measure(resolved, Plan(rate=2000, duration_s=10, warmup_s=2))
    print(render(report))

Modules, one concern each:

- ``wire``: request bytes built once; an incremental HTTP/1.1 response parser.
- ``engine``: keep-alive connections as asyncio protocols; the open loop (Poisson, latency from the
  scheduled time), the closed loop and the fixed burst.
- ``target``: URL, model and body, checked with one probe (bad input is a ConfigError, exit 2).
- ``run``: one measurement in one or several processes; ``report``: the figures and the verdicts;
  ``sweep``: the highest rate within a p99 budget.
- ``burst``: ``run_load``, the demo's and the tests' fixed burst, on the same engine.
"""

from inferlane.bench.burst import LoadResult, one_request, run_load
from inferlane.bench.engine import ClosedLoop, FixedList, OpenLoop, Tally, Target
from inferlane.bench.report import Report, build_report, render
from inferlane.bench.run import Plan, measure
from inferlane.bench.sweep import SweepResult, sweep
from inferlane.bench.target import Resolved, resolve
from inferlane.bench.wire import ProtocolError, Response, ResponseParser, build_request

__all__ = ["ClosedLoop", "FixedList", "LoadResult", "OpenLoop", "Plan", "ProtocolError", "Report", "Resolved",
           "Response", "ResponseParser", "SweepResult", "Tally", "Target", "build_report", "build_request",
           "measure", "one_request", "render", "resolve", "run_load", "sweep"]
