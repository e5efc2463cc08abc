"""The online benchmark's output: the header, the cell table, the raw ONNX Runtime block, the ideal
block and the targets block."""

from __future__ import annotations

from typing import Any

from benchmarks.online.cells import Cell
from benchmarks.online.config import CLIENT_BOUND_CPU, N_FEATURES, NOISY_CPU, RAW_BATCH, SOCKET_ERRORS_ALLOWED, Options
from benchmarks.online.targets import Ideal, Verdict
from inferlane.testing import Column, format_table, num, pct

# Where a sample's time goes in a py-spy profile of a server: the innermost frame whose file
# matches one of these (checked in order) names the component. py-spy shortens paths to "package/module.py".
COMPONENTS: list[tuple[str, str]] = [
    ("onnxruntime/", "ONNX Runtime session.run"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("inferlane/core/metrics.py", "metrics (prometheus_client)"),
    ("inferlane/lanes/online.py", "online lane"),
    ("inferlane/core/codec.py", "inferlane codec (V2 JSON parse/encode)"),
    ("inferlane/core/inputs/", "inferlane input contract (decode, validate)"),
    ("inferlane/core/batcher.py", "inferlane batcher"),
    ("inferlane/core/clock.py", "inferlane batcher"),
    ("inferlane/core/model.py", "inferlane model (checks, forward glue)"),
    ("inferlane/core/runtimes/", "inferlane runtime adapter"),
    ("inferlane/transport/http/", "inferlane HTTP handler"),
    ("benchmarks/online/naive.py", "naive endpoint handler"),
    ("benchmarks/online/bare.py", "bare endpoint handler"),
    ("orjson", "orjson"),
    ("numpy/", "numpy"),
    ("starlette/", "Starlette (routing, middleware, responses)"),
    ("uvicorn/", "uvicorn (httptools protocol)"),
    ("concurrent/futures/", "thread pool / futures"),
    ("threading.py", "thread pool / futures"),
    ("asyncio/runners.py", "event loop (uvloop, native: epoll, sockets, callbacks)"),
    ("asyncio/", "asyncio (Python part)"),
]

CELL_COLUMNS = [Column("server", left=True), Column("model", left=True), Column("mode", left=True), Column("conc"),
                Column("rps"), Column("p50 ms"), Column("p99 ms"), Column("srv cpu"), Column("cpu us/req"),
                Column("batch"), Column("non-2xx"), Column("sock err"), Column("wrk cpu"), Column("other"),
                Column("flags", left=True)]


def flags(c: Cell) -> str:
    return " ".join(name for name, on in (("BROKEN", c.broken), ("noisy?", c.noisy), ("retrans?", c.retransmits > 0),
                                          ("client-bound?", c.client_bound)) if on)


def cell_table(cells: list[Cell]) -> list[str]:
    rows = [[c.endpoint.server, c.endpoint.model, c.endpoint.mode, str(c.concurrency), num(c.rps, ",.0f"),
             num(c.p50_ms, ".2f"), num(c.p99_ms, ".2f"), pct(c.server_cpu), num(c.cpu_us_per_request, ".0f"),
             num(c.mean_batch, ".1f"), str(c.non_2xx), str(c.socket_errors), pct(c.client_cpu), pct(c.other_cpu),
             flags(c)] for c in cells]
    lines = format_table(CELL_COLUMNS, rows).splitlines()
    lines += [f"! {c.endpoint.label} c={c.concurrency}: {c.error}" for c in cells if c.error]
    return lines


def flag_notes(cells: list[Cell]) -> list[str]:
    notes = []
    if any(c.broken for c in cells):
        notes.append(f"BROKEN: no figures, any non-2xx, or more than {SOCKET_ERRORS_ALLOWED} socket errors "
                     "(the run exits 1)")
    if any(c.noisy for c in cells):
        notes.append(f"noisy?: other processes used >= {NOISY_CPU:.0%} of a core; re-run (--wait-quiet, --retry-noisy)")
    if any(c.retransmits for c in cells):
        notes.append("retrans?: the machine retransmitted TCP segments during the cell (on loopback: a drop or a "
                     "stall; the server under test can cause them, e.g. by not reading its sockets for long)")
    if any(c.client_bound for c in cells):
        notes.append(f"client-bound?: wrk used >= {CLIENT_BOUND_CPU:.0%} of its core; the server may have more")
    fastest = max((c for c in cells if c.client_cpu > 0), key=lambda c: c.rps, default=None)
    if fastest is not None:
        notes.append(f"client headroom: wrk used {fastest.client_cpu:.0%} of its core at {fastest.rps:,.0f} rps "
                     f"({fastest.endpoint.label}, c={fastest.concurrency})")
    return notes


def raw_block(opts: Options, raw: dict[str, dict[str, float]]) -> list[str]:
    cols = [Column("model", left=True), Column(f"us/batch @b{RAW_BATCH}"), Column(f"us/row @b{RAW_BATCH}"),
            Column(f"rows/s @b{RAW_BATCH}"), Column("us/row @b1")]
    rows = [[m, num(r[f"ms_per_run_b{RAW_BATCH}"] * 1e3, ",.1f"), num(1e6 / r[f"rows_per_s_b{RAW_BATCH}"], ".2f"),
             num(r[f"rows_per_s_b{RAW_BATCH}"], ",.0f"), num(r["ms_per_run_b1"] * 1e3, ".1f")] for m, r in raw.items()]
    return [f"raw ONNX Runtime, in-process, 1 thread, sequential, pinned to core {opts.server_core}, data in memory "
            f"({opts.raw_s:g} s per figure):", format_table(cols, rows)]


def ideal_block(ideal: dict[str, Ideal], cells: list[Cell]) -> list[str]:
    if not ideal:
        return ["ideal: not computed (no bare endpoint figure at c=64)"]
    cols = [Column("model", left=True), Column("raw us/row"), Column("bare us/req"), Column("ideal rps"),
            Column("inferlane rps"), Column("fraction")]
    rows = []
    for m, d in ideal.items():
        got = next((c.rps for c in cells if c.endpoint.server == "inferlane" and c.endpoint.model == m
                    and c.endpoint.mode == "batching on" and c.concurrency == 64), float("nan"))
        rows.append([m, num(d.raw_us_per_row, ".2f"), num(d.bare_us_per_request, ".1f"), num(d.rps, ",.0f"),
                     num(got, ",.0f"), pct(got / d.rps, 1)])
    return [f"ideal at c=64 = 1 / (raw s/row @b{RAW_BATCH} + bare endpoint s/request @c64); inferlane batching on:",
            format_table(cols, rows)]


def targets_block(verdicts: list[Verdict]) -> list[str]:
    cols = [Column("figure", left=True), Column("model", left=True), Column("measured"), Column("target"),
            Column("verdict", left=True)]
    rows = [[v.target.figure, v.model, num(v.value, ".2f"), f"{'<=' if v.target.at_most else '>='} {v.target.limit:g}",
             v.word + (" (flagged inputs: re-run)" if v.noisy else "")] for v in verdicts]
    passed = sum(v.passed for v in verdicts)
    return ["targets (ratios of figures from this run; inferlane = batching on; a MISS is reported, not a failure):",
            format_table(cols, rows), f"{passed} of {len(verdicts)} targets met"]


def report(opts: Options, cells: list[Cell], raw: dict[str, dict[str, float]], ideal: dict[str, Ideal],
           verdicts: list[Verdict], meta: dict[str, Any]) -> str:
    runs = f"median of {opts.repeat} runs of {opts.duration_s} s" if opts.repeat > 1 else f"{opts.duration_s} s"
    out = [f"inferlane online benchmark - {meta['started']} - {meta['host']} ({meta['cpus']} CPUs, load average "
           f"at start {meta['load_start']})",
           f"command: {meta['command']}",
           f"source: {meta['source']}",
           f"servers pinned to core {opts.server_core}; load: wrk -t1 pinned to core {opts.client_core}, keep-alive "
           f"connections (conc), one request in flight each, one row of {N_FEATURES} FP32 features per V2 JSON POST",
           f"per cell: {opts.warmup_s} s warm-up (at least 1 s for an endpoint's first cell), then {runs} measured",
           "", *cell_table(cells), *flag_notes(cells), "", *raw_block(opts, raw), "", *ideal_block(ideal, cells), "",
           *targets_block(verdicts), "",
           f"took {meta['elapsed_s']:.0f} s; load average at end {meta['load_end']}"]
    return "\n".join(out)
