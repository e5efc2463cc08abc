"""``python -m benchmarks.loadgen``: ``inferlane bench`` next to wrk, on the same servers in the same
run, each server pinned to one core and the load generator to the other.

    .venv/bin/python -m benchmarks.loadgen --quick      # 2 s per run, about a minute
    .venv/bin/python -m benchmarks.loadgen              # 10 s per run, about three minutes

Targets: ``inferlane serve`` with the demo's fraud model; the bare Starlette endpoint of
benchmarks/online (the Python HTTP floor); and a sink (benchmarks/loadgen/sink.py) that answers
without parsing, so that a generator pointed at it meets its own limit rather than the server's.
For each: wrk and ``inferlane bench`` in a closed loop at the same connections (rps, p50, p99,
the generator's CPU, bench/wrk); then ``inferlane bench`` open loop at 20,000 req/s against the
sink (does one core keep that schedule?) and at 70% of wrk's rate against inferlane (the open-loop
view of the same server). The last line is the rate one core of ``inferlane bench`` sustains.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, command_line, logger, module_command, source_state, write_json
from benchmarks.online.cells import Serving
from benchmarks.online.machine import pin
from benchmarks.online.servers import bare_server, inferlane_server, module_server
from benchmarks.online.wrk import WrkResult, lua_script, require_wrk, run_wrk, wrk_command
from inferlane.testing import (
    Column,
    all_cpu_seconds,
    format_table,
    num,
    pct,
    process_tree,
    ratio,
)

log = logger("loadgen-bench")
CONNECTIONS = 64
OPEN_RATE = 20_000
OPEN_SHARE_OF_WRK = 0.7


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 s per run and 1 s warm-ups (about a minute)")
    p.add_argument("--duration", type=int, default=None, metavar="SECONDS",
                   help="seconds per measured run (default 10, or 2 with --quick)")
    p.add_argument("--server-core", type=int, default=0, help="core the servers run on (default 0)")
    p.add_argument("--client-core", type=int, default=1, help="core wrk and inferlane bench run on (default 1)")
    p.add_argument("--json-out", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    return p


def sink_server(core: int, work: Path) -> contextlib.AbstractContextManager[Serving]:
    return module_server("benchmarks.loadgen.sink", core, work / "sink.log", "the sink answers", start_timeout_s=30)


def fraud_setup(work: Path) -> tuple[Path, bytes]:
    """The demo's fraud model in a repository, and one V2 request body for it."""
    import orjson

    from inferlane.demo.models import N_FEATURES, synthetic_transactions, write_fraud_model

    repo = work / "models"
    write_fraud_model(repo)
    x, _ = synthetic_transactions(1, seed=5)
    body = orjson.dumps({"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, N_FEATURES],
                                     "data": x.tolist()}]})
    return repo, body


class Others:
    """CPU the rest of the machine used around a run, in cores: processes alive before and after it,
    less the server (and this process). The generator pays for them, as the figures do: a run with
    others near a core is noise, and the table says so."""

    def __init__(self, server_pid: int) -> None:
        self.exclude = process_tree(server_pid) | {os.getpid()}
        self.before = all_cpu_seconds()
        self.t0 = time.perf_counter()

    def cores(self) -> float:
        after, wall = all_cpu_seconds(), time.perf_counter() - self.t0
        used = sum(v - self.before[pid] for pid, v in after.items() if pid in self.before and pid not in self.exclude)
        return used / wall


def run_bench(url: str, body: Path, mode: list[str], duration_s: int, warmup_s: int, core: int,
              out: Path) -> dict[str, Any]:
    """``inferlane bench`` as a user runs it, pinned to ``core``; its --json figures."""
    cmd = module_command("inferlane", "bench", url, "--body", str(body), *mode, "--duration", f"{duration_s}s",
                         "--warmup", f"{warmup_s}s", "--json", str(out), prefix=pin(core))
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration_s + warmup_s + 120,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"inferlane bench exited {done.returncode}: {done.stderr.strip()[-500:]}")
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def run_wrk_on(url: str, script: Path, duration_s: int, core: int) -> WrkResult:
    return run_wrk(wrk_command(url, CONNECTIONS, duration_s, script, prefix=pin(core)), timeout_s=duration_s + 60)


def measure_target(name: str, url: str, server_pid: int, body: Path, script: Path, args: argparse.Namespace,
                   work: Path) -> dict[str, Any]:
    d, w, core = args.duration, args.warmup, args.client_core
    log(f"{name}: warm-up, then wrk and inferlane bench, {d} s each at {CONNECTIONS} connections")
    run_wrk_on(url, script, max(1, w), core)
    others = Others(server_pid)
    wrk = run_wrk_on(url, script, d, core)
    wrk_others = others.cores()
    bench = open_bench(url, server_pid, body, ["--concurrency", str(CONNECTIONS)], args, work / f"{name}-closed.json")
    return {"target": name, "wrk": wrk.__dict__ | {"rps": wrk.rps, "cpu": wrk.client_cpu_s / wrk.seconds,
                                                   "others_cores": wrk_others},
            "bench": bench}


def open_bench(url: str, server_pid: int, body: Path, mode: list[str], args: argparse.Namespace,
               out: Path) -> dict[str, Any]:
    others = Others(server_pid)
    doc = run_bench(url, body, mode, args.duration, args.warmup, args.client_core, out)
    doc["others_cores"] = others.cores()
    return doc


def closed_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        wrk, bench = r["wrk"], r["bench"]
        rows.append([r["target"], "wrk", "closed", num(wrk["rps"], ",.0f"), num(wrk["p50_ms"], ".2f"),
                     num(wrk["p99_ms"], ".2f"), pct(wrk["cpu"]), num(wrk["others_cores"], ".2f"), ""])
        rows.append([r["target"], "inferlane bench", "closed", num(bench["throughput"], ",.0f"),
                     num(bench["latency_ms"]["p50"], ".2f"), num(bench["latency_ms"]["p99"], ".2f"),
                     pct(bench["cpu_share"]), num(bench["others_cores"], ".2f"),
                     ratio(bench["throughput"] / wrk["rps"])])
    return rows


def open_row(target: str, doc: dict[str, Any]) -> list[str]:
    return [target, "inferlane bench", f"open {doc['target_rate']:,.0f}/s", num(doc["throughput"], ",.0f"),
            num(doc["latency_ms"]["p50"], ".2f"), num(doc["latency_ms"]["p99"], ".2f"), pct(doc["cpu_share"]),
            num(doc["others_cores"], ".2f"),
            f"sent {doc['sent_rate'] / doc['scheduled_rate']:.0%}, own lag p99 {doc['late_ms']['p99']:.2f} ms"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.duration = args.duration or (2 if args.quick else 10)
    args.warmup = 1 if args.quick else 2
    require_wrk()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-") as tmp:
        work = Path(tmp)
        repo, body_bytes = fraud_setup(work)
        body = work / "body.json"
        body.write_bytes(body_bytes)
        script = work / "body.lua"
        script.write_text(lua_script([body_bytes]))
        results, opens = [], []
        with inferlane_server(args.server_core, work, repo) as s:
            url = f"http://127.0.0.1:{s.port}/v2/models/fraud/infer"
            results.append(measure_target("inferlane serve (fraud)", url, s.pid, body, script, args, work))
            rate = int(results[-1]["wrk"]["rps"] * OPEN_SHARE_OF_WRK)
            log(f"inferlane serve: open loop at {rate:,} req/s (70% of wrk's closed-loop rate)")
            opens.append(open_row("inferlane serve (fraud)", open_bench(
                url, s.pid, body, ["--rate", str(rate)], args, work / "il-open.json")))
        with bare_server(args.server_core, work) as s:
            results.append(measure_target("bare Starlette", f"http://127.0.0.1:{s.port}/v2/models/small/infer",
                                          s.pid, body, script, args, work))
        with sink_server(args.server_core, work) as s:
            url = f"http://127.0.0.1:{s.port}/v2/models/sink/infer"
            results.append(measure_target("sink (no parsing)", url, s.pid, body, script, args, work))
            log(f"sink: open loop at {OPEN_RATE:,} req/s")
            sink_open = open_bench(url, s.pid, body, ["--rate", str(OPEN_RATE), "--connections", str(CONNECTIONS)],
                                   args, work / "sink-open.json")
            opens.append(open_row("sink (no parsing)", sink_open))
    columns = [Column("target", left=True), Column("tool", left=True), Column("mode", left=True), Column("rps"),
               Column("p50 ms"), Column("p99 ms"), Column("generator CPU"), Column("others' CPU (cores)"),
               Column("bench/wrk", left=True)]
    print(f"\n{command_line()}\n{source_state()}; server on core {args.server_core}, generator on core "
          f"{args.client_core}; {CONNECTIONS} connections; {args.duration} s per run\n")
    print(format_table(columns, closed_rows(results) + opens))
    sink = results[-1]["bench"]
    per_core = sink["throughput"] / sink["cpu_share"] if sink["cpu_share"] else float("nan")
    kept = not sink_open["generator_behind"] and sink_open["sent_rate"] >= 0.95 * sink_open["scheduled_rate"]
    print(f"\none core of inferlane bench: {sink['throughput']:,.0f} req/s closed loop at {sink['cpu_share']:.0%} "
          f"of its core (about {per_core:,.0f} req/s at 100%); open loop at {OPEN_RATE:,} req/s: "
          f"{'kept' if kept else 'did NOT keep'} the schedule (sent {sink_open['sent_rate']:,.0f} req/s, "
          f"own lateness p99 {sink_open['late_ms']['p99']:.2f} ms, CPU {sink_open['cpu_share']:.0%})")
    print(f"({time.time() - t0:.0f} s in all; figures are noisy when other processes share the machine)")
    if args.json_out is not None:
        write_json(args.json_out, {"closed": results, "open": opens, "sink_open": sink_open,
                                   "one_core_rps_estimate": per_core})
    return 0


if __name__ == "__main__":
    sys.exit(main())
