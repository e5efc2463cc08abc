"""The hybrid benchmark's output: the latency table (hits against live scoring per store and rate), the
precompute table, and the issue's two targets as PASS/MISS. A missed target is reported, never an error."""

from __future__ import annotations

from benchmarks.hybrid.latency import Phase
from benchmarks.hybrid.precompute import Precompute
from inferlane.testing import Column, format_table, num, ratio

HIT_P99_MS = 2.0
"""Target: a precomputed hit's p99 at 5,000 requests/s with Redis (Feast's Go server: 3.9 ms for one row)."""
TARGET_RATE = 5000.0
REDIS_OVER_PARQUET = 0.7
"""Target: the batch lane's rows/s into Redis over its rows/s into Parquet."""


def _rate(p: Phase) -> str:
    return f"{p.achieved:,.0f}" + ("" if p.reached else " (not reached)")


def _note(hit: Phase, live: Phase) -> str:
    notes = []
    for p in (hit, live):
        if not p.reached:
            notes.append(f"{p.kind}: {p.offered:,.0f}/s not reached, highest {p.achieved:,.0f}/s")
        if p.not_from_store:
            notes.append(f"{p.not_from_store} hit answers not from the store")
        if p.lag_p99_ms > 5:
            notes.append(f"{p.kind}: client late by {p.lag_p99_ms:.0f} ms at p99")
    return "; ".join(notes) or "-"


def latency_table(phases: list[Phase]) -> str:
    cols = [Column("store", left=True), Column("offered/s"), Column("hit/s"), Column("hit p50 ms"),
            Column("hit p99 ms"), Column("hit cpu us"), Column("live/s"), Column("live p50 ms"), Column("live p99 ms"),
            Column("live cpu us"), Column("live/hit p99"), Column("failed hit/live"), Column("note", left=True)]
    rows = []
    by = {(p.store, p.offered, p.kind): p for p in phases}
    for (store, offered, kind), hit in by.items():
        if kind != "hit":
            continue
        live = by[(store, offered, "live")]
        rows.append([store, f"{offered:,.0f}", _rate(hit), num(hit.p50_ms, ".2f"), num(hit.p99_ms, ".2f"),
                     num(hit.cpu_us, ".0f"), _rate(live), num(live.p50_ms, ".2f"), num(live.p99_ms, ".2f"),
                     num(live.cpu_us, ".0f"),
                     ratio(live.p99_ms / hit.p99_ms if hit.p99_ms else None, 1), f"{hit.failed}/{live.failed}",
                     _note(hit, live)])
    return format_table(cols, rows)


def precompute_table(runs: list[Precompute]) -> str:
    base = next(r for r in runs if r.output == "parquet")
    cols = [Column("output", left=True), Column("rows"), Column("seconds"), Column("rows/s"), Column("vs Parquet")]
    return format_table(cols, [[r.output, f"{r.rows:,}", num(r.seconds, ".2f"), num(r.rows_per_s, ",.0f"),
                                ratio(r.rows_per_s / base.rows_per_s)] for r in runs])


def targets_table(phases: list[Phase], runs: list[Precompute]) -> str:
    cols = [Column("target", left=True), Column("measured", left=True), Column("", left=True)]
    rows = []
    hit = next((p for p in phases if p.store == "redis" and p.kind == "hit" and p.offered == TARGET_RATE), None)
    if hit is None:
        rows.append([f"hit p99 < {HIT_P99_MS:g} ms at {TARGET_RATE:,.0f}/s, Redis", "not measured", "MISS"])
    else:
        met = hit.reached and hit.p99_ms < HIT_P99_MS and not hit.failed and not hit.not_from_store
        at = f"{hit.achieved:,.0f}/s" + ("" if hit.reached else f": {TARGET_RATE:,.0f}/s not reached on this machine")
        rows.append([f"hit p99 < {HIT_P99_MS:g} ms at {TARGET_RATE:,.0f}/s, Redis", f"{hit.p99_ms:.2f} ms at {at}",
                     "PASS" if met else "MISS"])
    base = next(r for r in runs if r.output == "parquet")
    redis = next(r for r in runs if r.output == "redis")
    share = redis.rows_per_s / base.rows_per_s
    rows.append([f"precompute into Redis >= {REDIS_OVER_PARQUET:g} x Parquet",
                 f"{share:.2f}x ({redis.rows_per_s:,.0f} vs {base.rows_per_s:,.0f} rows/s)",
                 "PASS" if share >= REDIS_OVER_PARQUET else "MISS"])
    return format_table(cols, rows)
