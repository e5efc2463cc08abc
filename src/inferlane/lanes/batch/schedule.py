"""Scheduled batch runs: cron timing, run history, and a finish-time estimate against a deadline.

Before each run the scheduler counts the rows to score (from the shard plan) and divides by the
throughput of the last runs; if the estimated finish is past the deadline it says so at the
start of the run (a WARNING log line and the ``inferlane_batch_deadline_at_risk`` gauge), not
when the deadline has already passed.

    run_schedule(Schedule(cron="0 2 * * *", job=template, deadline="08:00"), stop=threading.Event())

``template``'s job id, input and output may hold ``{date}``, ``{time}`` and ``{name}``.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.core.repository import scan_model
from inferlane.core.state import state_dir
from inferlane.lanes.batch.config import BatchJob
from inferlane.lanes.batch.job import plan, run_batch

log = logging.getLogger("inferlane.batch.schedule")


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
    # rows_per_s is this run's rate: divide this run's rows (a resumed run read fewer than the job's total).
    overhead = statistics.median(
        max(0.0, float(r["duration_s"]) - float(r.get("rows_read_this_run", r["rows_read"])) / float(r["rows_per_s"]))
        for r in history)
    finish = start + timedelta(seconds=overhead + rows / rate)
    return Estimate(rows, rate, overhead, finish, deadline)


@dataclass(frozen=True)
class Schedule:
    cron: str
    """Cron expression in local time, e.g. ``0 2 * * *``."""
    job: BatchJob
    """The job to run; its job_id, input and output are templates ({date}, {time}, {name})."""
    deadline: str | None = None
    """Time of day each run must finish by, e.g. ``08:00``."""
    name: str = "batch"
    history: Path | None = None
    """Run history (JSON lines); default ``<state folder>/schedule-<name>.jsonl`` (``core/state.py``)."""
    run_now: bool = False
    max_runs: int | None = None


def run_schedule(schedule: Schedule, stop: threading.Event, *, metrics: Metrics | None = None,
                 on_report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the job at each cron time until ``stop`` is set or ``max_runs`` ran; returns the runs."""
    from croniter import croniter

    if not croniter.is_valid(schedule.cron):
        raise ConfigError(f"--cron {schedule.cron!r}: not a cron expression (e.g. '0 2 * * *')")
    metrics = metrics or Metrics()
    entry = scan_model(Path(schedule.job.model))
    labels = (entry.name, schedule.job.version or entry.default_version, "batch")
    at_risk = metrics.gauge("inferlane_batch_deadline_at_risk", "1 when the estimated finish is past the deadline",
                            ("schedule",)).labels(*labels, schedule.name)
    eta = metrics.gauge("inferlane_batch_estimated_finish_timestamp_seconds", "Estimated finish (Unix time)",
                        ("schedule",)).labels(*labels, schedule.name)
    last_ok = metrics.gauge("inferlane_batch_last_success_timestamp_seconds", "Last successful run (Unix time)",
                            ("schedule",)).labels(*labels, schedule.name)
    history = schedule.history or state_dir() / f"schedule-{schedule.name}.jsonl"
    cron = croniter(schedule.cron, datetime.now().astimezone())
    runs = 0
    while not stop.is_set() and (schedule.max_runs is None or runs < schedule.max_runs):
        fire = datetime.now().astimezone() if (schedule.run_now and runs == 0) else cron.get_next(datetime)
        log.info("next run of %s at %s", schedule.name, f"{fire:%Y-%m-%d %H:%M:%S %Z}")
        if stop.wait(max(0.0, (fire - datetime.now().astimezone()).total_seconds())):
            break
        fields = {"date": f"{fire:%Y-%m-%d}", "time": f"{fire:%H%M}", "name": schedule.name}
        t = schedule.job
        job = replace(t, job_id=t.job_id.format(**fields), input=t.input.format(**fields),
                      output=t.output.format(**fields), metrics_port=None)
        start = datetime.now().astimezone()
        est = estimate(sum(s.rows for s in plan(job)), read_history(history), start,
                       parse_deadline(schedule.deadline, fire))
        at_risk.set(1 if est.at_risk else 0)
        if est.finish is not None:
            eta.set(est.finish.timestamp())
        if est.at_risk:
            log.warning("DEADLINE AT RISK for job %s: %s", job.job_id, est.describe())
        else:
            log.info("job %s: %s", job.job_id, est.describe())
        report = run_batch(job, metrics=metrics)
        if on_report is not None:
            on_report(report)
        append_history(history, report)
        if report["status"] == "succeeded":
            last_ok.set(datetime.now().timestamp())
        runs += 1
    return runs
