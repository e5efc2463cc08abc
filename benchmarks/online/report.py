"""The online benchmark's output: the cell table, the driver's headroom, the raw-model block, the
ideal/target block and the reference block."""

from __future__ import annotations

from typing import Any

from benchmarks.online.cells import Cell
from benchmarks.online.config import (
    CLIENT_BOUND_CPU,
    MODELS,
    N_FEATURES,
    NOISY_CPU,
    RAW_BATCH,
    REFERENCE,
    STALLED_CPU,
    TARGETS,
    Options,
)
from inferlane.testing import Column, format_table, num, pct

# Where a sample's time goes in a py-spy profile of the server: the innermost frame whose file
# matches one of these (checked in order) names the component. py-spy shortens paths to "package/module.py".
COMPONENTS: list[tuple[str, str]] = [
    ("onnxruntime/", "ONNX Runtime session.run"),
    ("prometheus_client/", "metrics (prometheus_client)"),
    ("inferlane/core/metrics.py", "metrics (prometheus_client)"),
    ("inferlane/lanes/online.py", "online lane (incl. metrics)"),
    ("inferlane/core/codec.py", "inferlane codec (V2 JSON parse/encode)"),
    ("inferlane/core/inputs/", "inferlane input contract (decode, validate)"),
    ("inferlane/core/batcher.py", "inferlane batcher"),
    ("inferlane/core/clock.py", "inferlane batcher"),
    ("inferlane/core/model.py", "inferlane model (checks, forward glue)"),
    ("inferlane/core/runtimes/", "inferlane runtime adapter"),
    ("inferlane/transport/http/", "inferlane HTTP handler"),
    ("numpy/", "numpy"),
    ("starlette/", "Starlette (routing, middleware, responses)"),
    ("uvicorn/", "uvicorn (httptools protocol)"),
    ("concurrent/futures/", "thread pool / futures"),
    ("threading.py", "thread pool / futures"),
    ("asyncio/runners.py", "event loop (uvloop, native: epoll, sockets, callbacks)"),
    ("asyncio/", "asyncio (Python part)"),
]

CELL_COLUMNS = [Column("server", left=True), Column("model", left=True), Column("mode", left=True), Column("conc"),
                Column("rps"), Column("p50 ms"), Column("p99 ms"), Column("mean batch"), Column("fwd ms"),
                Column("errors"), Column("srv cpu"), Column("cli cpu"), Column("other"), Column("flags", left=True)]


def flags(c: Cell) -> str:
    return " ".join(name for name, on in (("client-bound?", c.client_bound), ("noisy?", c.noisy),
                                          ("stalled?", c.stalled)) if on)


def format_cells(cells: list[Cell]) -> list[str]:
    rows = [[c.section, c.model, c.mode, str(c.concurrency), num(c.rps, ".0f"), num(c.p50_ms, ".2f"),
             num(c.p99_ms, ".2f"), num(c.mean_batch, ".1f"), num(c.forward_ms, ".2f"), str(c.errors),
             pct(c.server_cpu), pct(c.client_cpu), pct(c.other_cpu), flags(c)] for c in cells]
    lines = format_table(CELL_COLUMNS, rows).splitlines()
    for c in cells:
        if c.exception:
            lines.append(f"! {c.section} {c.model} {c.mode} c={c.concurrency}: {c.exception}")
    return lines


def client_headroom(cells: list[Cell]) -> list[str]:
    """Whether the load driver could have been the limit anywhere."""
    lines = []
    fastest = max((c for c in cells if c.client_cpu > 0), key=lambda c: c.rps, default=None)
    if fastest is not None:
        capacity = fastest.rps / fastest.client_cpu
        lines.append(f"client headroom: at {fastest.rps:,.0f} rps ({fastest.section}, c={fastest.concurrency}) the "
                     f"driver used {fastest.client_cpu:.0%} of its core, i.e. about {capacity:,.0f} rps at 100%")
    bound = [c for c in cells if c.client_bound]
    if bound:
        lines.append(f"  {len(bound)} cell(s) flagged client-bound?: the driver used >= {CLIENT_BOUND_CPU:.0%} of "
                     "its core there, so the server may have more to give")
    else:
        lines.append(f"  no cell had the driver at >= {CLIENT_BOUND_CPU:.0%} of its core: "
                     "it was not the limit in any cell")
    noisy = [c for c in cells if c.noisy]
    if noisy:
        lines.append(f"  {len(noisy)} cell(s) flagged noisy?: other processes used >= {NOISY_CPU:.0%} of a core "
                     "during them; re-run on a quiet machine")
    stalled = [c for c in cells if c.stalled]
    if stalled:
        lines.append(f"  {len(stalled)} cell(s) flagged stalled?: TCP retransmits during the cell, or the bare "
                     f"endpoint below {STALLED_CPU:.0%} of its core; re-run")
    return lines


def compute_ideal(cells: list[Cell], raw: dict[str, dict[str, float]], top_c: int) -> list[dict[str, Any]]:
    """Per model at the highest concurrency with batching on: the cell's rps over the ideal, a
    server paying only the HTTP floor per request plus the model's batched cost per row."""
    bare = next((c for c in cells if c.section == "HTTP floor" and c.concurrency == top_c), None)
    rows = []
    for model in MODELS:
        got = next((c for c in cells if c.section == "inferlane" and c.model == model
                    and c.mode == "batching on" and c.concurrency == top_c), None)
        if bare is None or got is None or not bare.rps or bare.rps != bare.rps:
            continue
        s_row = 1.0 / raw[model][f"rows_per_s_b{RAW_BATCH}"]
        s_req = 1.0 / bare.rps
        ideal = 1.0 / (s_row + s_req)
        fraction = got.rps / ideal
        min_fraction, p99_limit = TARGETS[model]
        ok = fraction >= min_fraction and got.errors == 0 and (p99_limit is None or got.p99_ms < p99_limit)
        target = f">= {min_fraction:.0%} of ideal" + (f", p99 < {p99_limit:.0f} ms" if p99_limit is not None else "")
        rows.append({"model": model, "concurrency": top_c, "raw_us_per_row": s_row * 1e6,
                     "bare_us_per_request": s_req * 1e6, "ideal_rps": ideal, "achieved_rps": got.rps,
                     "p99_ms": got.p99_ms, "fraction": fraction, "target": target, "pass": ok,
                     "bare_client_bound": bare.client_bound, "noisy": bare.suspect or got.suspect})
    return rows


def _raw_block(opts: Options, raw: dict[str, dict[str, float]]) -> list[str]:
    rows = [[m, num(r["rows_per_s_b64"], ".0f"), num(1e6 / r["rows_per_s_b64"], ".2f"), num(r["ms_per_run_b64"], ".3f"),
             num(r["rows_per_s_b1"], ".0f")] for m, r in ((m, raw[m]) for m in MODELS)]
    cols = [Column("model", left=True), Column(f"rows/s @b{RAW_BATCH}"), Column(f"us/row @b{RAW_BATCH}"),
            Column(f"ms/batch @b{RAW_BATCH}"), Column("rows/s @b1")]
    return [f"raw ONNX Runtime, in-process, 1 thread, pinned to core {opts.server_core}, data in memory "
            f"({opts.raw_s:g} s per figure):", format_table(cols, rows)]


def _ideal_block(ideal: list[dict[str, Any]]) -> list[str]:
    if not ideal:
        return []
    top_c = ideal[0]["concurrency"]
    cols = [Column("model", left=True), Column("us/row"), Column("us/req"), Column("ideal rps"), Column("achieved"),
            Column("fraction"), Column("p99 ms"), Column("target", left=True)]
    rows = []
    for d in ideal:
        verdict = "PASS" if d["pass"] else "MISS"
        if d["noisy"]:
            verdict += " (disturbed inputs: re-run before trusting this)"
        rows.append([d["model"], num(d["raw_us_per_row"], ".2f"), num(d["bare_us_per_request"], ".2f"),
                     num(d["ideal_rps"], ".0f"), num(d["achieved_rps"], ".0f"), pct(d["fraction"], 1),
                     num(d["p99_ms"], ".2f"), f"{d['target']}: {verdict}"])
    lines = [f"ideal at concurrency {top_c}, batching on: 1 / (raw s/row @b{RAW_BATCH} + bare-endpoint "
             f"s/request @c{top_c})", format_table(cols, rows)]
    if any(d["bare_client_bound"] for d in ideal):
        lines.append("note: the client was near 100% of its core on the bare endpoint, so the HTTP floor "
                     "(and the ideal) may be understated")
    return [*lines, ""]


def report(opts: Options, cells: list[Cell], raw: dict[str, dict[str, float]], ideal: list[dict[str, Any]],
           meta: dict[str, Any]) -> str:
    out = [f"inferlane online benchmark - {meta['started']} - {meta['host']} ({meta['cpus']} CPUs, load average "
           f"at start {meta['load_start']})",
           f"server pinned to core {opts.server_core}, load driver pinned to core {opts.client_core}; client: "
           "inferlane.demo.loadgen.run_load (asyncio HTTP/1.1 keep-alive, uvloop), one request in flight per "
           "connection",
           f"source: {meta['source']}",
           f"per cell: {opts.warmup_s:g} s warm-up, then about {opts.duration_s:g} s measured; each request is one "
           f"row of {N_FEATURES} FP32 features (V2 JSON)", "",
           *format_cells(cells), *client_headroom(cells), "", *_raw_block(opts, raw), "", *_ideal_block(ideal),
           "reference, measured earlier on this machine, not this run (small MLP, concurrency 64, same pinning):"]
    for name, rps, p99 in REFERENCE:
        out.append(f"  {name:<42} {rps:>7,.0f} rps" + (f"  (p99 {p99:.0f} ms)" if p99 else ""))
    out += ["", f"command: {meta['command']}",
            f"took {meta['elapsed_s']:.0f} s; load average at end {meta['load_end']}"]
    return "\n".join(out)
