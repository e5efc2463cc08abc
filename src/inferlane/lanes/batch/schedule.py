"""Scheduled batch runs: cron timing, run history, and a finish-time estimate against a deadline.

Before each run the scheduler counts the rows to score (from the shard plan) and divides by the
throughput of the last runs; if the estimated finish is past the deadline it says so at the
start of the run (a WARNING log line and the ``inferlane_batch_deadline_at_risk`` gauge), not
when the deadline has already passed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson

from inferlane.core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Estimate:
    rows: int
    rows_per_s: float | None
    """Median throughput of recent runs; None when there is no history yet."""
    overhead_s: float
    """Median fixed cost per run (start-up, planning, report)."""
    finish: datetime | None
    deadline: datetime | None

    @property
    def at_risk(self) -> bool:
        return self.finish is not None and self.deadline is not None and self.finish > self.deadline

    def describe(self) -> str:
        if self.finish is None:
            return f"{self.rows} rows to score; no earlier runs to estimate the finish time from"
        text = (f"{self.rows} rows at {self.rows_per_s:,.0f} rows/s (median of recent runs): "
                f"estimated finish {self.finish:%Y-%m-%d %H:%M:%S}")
        if self.deadline is not None:
            slack = (self.deadline - self.finish).total_seconds()
            text += (f", deadline {self.deadline:%Y-%m-%d %H:%M:%S} "
                     + (f"MISSED BY {-slack:.0f} s" if slack < 0 else f"with {slack:.0f} s to spare"))
        return text


def parse_deadline(text: str | None, start: datetime) -> datetime | None:
    """``HH:MM`` → its next occurrence at or after ``start`` (same timezone as start)."""
    if not text:
        return None
    try:
        t = time.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--deadline {text!r}: write a time of day like 08:00") from None
    candidate = start.replace(hour=t.hour, minute=t.minute, second=t.second, microsecond=0)
    return candidate if candidate >= start else candidate + timedelta(days=1)


def read_history(path: Path, last: int = 5) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    runs = []
    for line in path.read_bytes().splitlines():
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if rec.get("status") == "succeeded" and rec.get("rows_per_s"):
            runs.append(rec)
    return runs[-last:]


def append_history(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fh.write(orjson.dumps(report) + b"\n")


def estimate(rows: int, history: list[dict[str, Any]], start: datetime, deadline: datetime | None) -> Estimate:
    if not history:
        return Estimate(rows, None, 0.0, None, deadline)
    rate = statistics.median(float(r["rows_per_s"]) for r in history)
    overhead = statistics.median(
        max(0.0, float(r["duration_s"]) - float(r["rows_read"]) / float(r["rows_per_s"])) for r in history)
    finish = start + timedelta(seconds=overhead + rows / rate)
    return Estimate(rows, rate, overhead, finish, deadline)
