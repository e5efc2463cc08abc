"""The stream benchmark's rows and table."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferlane.testing import Column, format_table, num, pct

TARGET_EPS = 100_000
TARGET_P99_MS = 250.0
TARGET_WAIT = 50.0
"""Targets, small model on Kafka at max-wait 50: backlog at least TARGET_EPS events/s; paced p99
under TARGET_P99_MS."""


@dataclass
class Row:
    lane: str
    model: str
    transport: str
    max_wait_ms: float | None
    load: str
    events: int
    events_per_s: float | None = None
    x_raw: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    lane_cpu: float | None = None
    broker_cpu: float | None = None
    outputs: int | None = None
    distinct: int | None = None
    dead_lettered: int | None = None
    sink_events_per_s: float | None = None
    target: str = "-"
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every event scored once or more (no id missing), none dead-lettered, no failure."""
        if self.notes:
            return False
        return self.outputs is None or (self.distinct == self.events and not self.dead_lettered)


COLUMNS = [Column("lane", left=True), Column("model", left=True), Column("transport", left=True),
           Column("max-wait"), Column("load", left=True), Column("events"), Column("events/s"), Column("×raw"),
           Column("p50 ms"), Column("p99 ms"), Column("lane cpu"), Column("broker cpu"), Column("scored", left=True),
           Column("target", left=True)]


def scored(r: Row) -> str:
    if r.notes:
        return "✗ failed (below)"
    if r.outputs is None:
        return "-"
    if r.complete:
        return "✓"
    return f"✗ {r.distinct:,} ids, {r.outputs:,} records, {r.dead_lettered} dead"


def table(rows: list[Row]) -> str:
    cells = [[r.lane, r.model, r.transport, num(r.max_wait_ms, "g"), r.load, f"{r.events:,}",
              num(r.events_per_s, ",.0f"), num(r.x_raw, ".2f"), num(r.p50_ms, ".1f"), num(r.p99_ms, ".1f"),
              pct(r.lane_cpu), pct(r.broker_cpu), scored(r), r.target] for r in rows]
    text = format_table(COLUMNS, cells)
    for r in rows:
        for note in r.notes:
            text += f"\n{r.model} {r.transport} {r.load} max-wait {num(r.max_wait_ms, 'g')}: {note[:2000]}"
    return text
