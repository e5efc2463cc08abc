"""The jobs benchmark's tables: one row per store and scenario, then the flood figures per store."""

from __future__ import annotations

from benchmarks.jobs.flood import ONLINE_BUDGET_MS, FloodRow
from benchmarks.jobs.scenarios import Row
from inferlane.testing import Column, format_table, num, ratio

JOB_COLUMNS = [("store", "store", "s"), ("scenario", "scenario", "s"), ("jobs", "jobs", "d"),
               ("submit_rate", "submit jobs/s", ".0f"), ("submit_p50", "202 p50 ms", ".1f"),
               ("submit_p99", "202 p99 ms", ".1f"), ("done_rate", "done jobs/s", ".0f"),
               ("result_p50", "result p50 ms", ".1f"), ("result_p99", "result p99 ms", ".1f"),
               ("seen_p50", "seen p50 ms", ".1f"), ("seen_p99", "seen p99 ms", ".1f")]


def jobs_table(rows: list[Row]) -> str:
    cols = [Column(title, left=fmt == "s") for _, title, fmt in JOB_COLUMNS]
    cells = [[getattr(r, attr) if fmt == "s" else num(getattr(r, attr), fmt) for attr, _, fmt in JOB_COLUMNS]
             for r in rows]
    return format_table(cols, cells)


def flood_table(rows: list[FloodRow]) -> str:
    cols = [Column("store", left=True), Column("jobs"), Column("drain s"), Column("jobs/s"), Column("quiet n"),
            Column("quiet p50 ms"), Column("quiet p99 ms"), Column("flood n"), Column("flood p50 ms"),
            Column("flood p99 ms"), Column("flood max ms"), Column("p99 flood/quiet"), Column("target", left=True)]
    cells = []
    for r in rows:
        ok = r.flood_p99 < ONLINE_BUDGET_MS
        cells.append([r.store, str(r.jobs), num(r.drain_s, ".1f"), num(r.jobs / r.drain_s, ".0f"),
                      str(r.quiet_requests), num(r.quiet_p50, ".1f"), num(r.quiet_p99, ".1f"), str(r.flood_requests),
                      num(r.flood_p50, ".1f"), num(r.flood_p99, ".1f"), num(r.flood_max, ".1f"), ratio(r.p99_ratio),
                      f"{'✓' if ok else '✗'} p99 < {ONLINE_BUDGET_MS:g} ms"])
    return format_table(cols, cells)
