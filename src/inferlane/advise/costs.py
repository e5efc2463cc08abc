"""The cost of every pattern for one workload, from the measured profile.

The unit is the one the seeds use: dollars per million predictions, from a machine's price per
hour and the predictions per second it sustains.

    cost_per_million(3.0, 200)      # 4.1666...: a $3/hour GPU answering one request per forward
    cost_per_million(3.0, 6_400)    # 0.1302...: the same GPU with batches of 64

How each pattern is sized (docs/choosing.md, "The cost math"):

- **online**: ``ceil(peak_rps / rows/s at the batch size that meets the p99)`` replicas, 24 h a day
  (always on, sized for the peak, full price). No headroom is added: the p99 rule already lets a
  request wait for a whole batch in flight.
- **batch**: the day's rows at the peak rows/s of the profile (the largest batches), on spot
  machines. With inputs known ahead it rescores every key each freshness period
  (``keys x 86400 / freshness`` rows a day, at most every 5 minutes); with inputs that only
  exist at event time it scores each event once, later.
- **hybrid**: the same precompute, plus a live layer always on that answers the misses
  (``hybrid_miss_rate`` of the peak) at the online rate; at least one replica.
- **stream**: consumers always on, sized for the peak event rate at the peak rows/s (micro-batches
  have seconds, not milliseconds, to fill).
- **async jobs**: workers always on, sized for the average rate at the peak rows/s: the queue
  absorbs the peaks.

Costs per million divide the day's cost by the predictions *used* (``requests_per_day``), so a
batch job that rescores keys nobody asks for pays for them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from inferlane.advise.profile import Profile
from inferlane.advise.workload import Pattern, Workload

HOURS_PER_DAY = 24.0
SECONDS_PER_DAY = 86_400.0
BATCH_MIN_PERIOD_S = 300.0
"""A schedule runs at most every 5 minutes; fresher answers need a stream or a live model."""


def cost_per_million(price_per_hour: float, rows_per_s: float) -> float:
    """Dollars per million predictions of one machine at ``price_per_hour`` kept busy at ``rows_per_s``."""
    return price_per_hour / (rows_per_s * 3600.0) * 1e6


@dataclass(frozen=True, slots=True)
class PatternCost:
    pattern: Pattern
    replicas: int
    """Machines always on (0 for batch, which runs only while it has rows to score)."""
    machine_hours_per_day: float
    rows_per_day: float
    """Predictions computed per day (batch may compute more than are used)."""
    rows_per_s_per_machine: float
    cost_per_day: float
    cost_per_million: float
    """Per million predictions used (``requests_per_day``)."""
    sizing: str
    """How the machines were counted, in one line."""

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["pattern"] = str(self.pattern)
        return doc


def online_rate(profile: Profile, workload: Workload) -> tuple[int, float]:
    """(batch size, rows/s per replica) online serving runs at: the batching advice for the p99
    budget, or the knee when nobody waits."""
    if workload.p99_ms is None:
        k = profile.knee
        return k.batch_size, k.rows_per_s
    advice = profile.batching_for(workload.p99_ms)
    return advice.max_batch_size, advice.rows_per_s


def _always_on(pattern: Pattern, w: Workload, rate: float, rps: float, rows: float, how: str,
               minimum: int = 1) -> PatternCost:
    replicas = max(minimum, math.ceil(rps / rate - 1e-9))
    hours = replicas * HOURS_PER_DAY
    cost = hours * w.price_per_hour
    return PatternCost(pattern, replicas, hours, rows, rate, cost, cost / (w.requests_per_day / 1e6),
                       f"{how}: ceil({_n(rps)} / {_n(rate)} rows/s) = {replicas} x 24 h")


def batch_rows_per_day(w: Workload) -> float:
    if w.inputs_at_request_time == "yes":
        return w.requests_per_day
    return w.key_space * SECONDS_PER_DAY / max(w.freshness_s, BATCH_MIN_PERIOD_S)


def _precompute(w: Workload, profile: Profile) -> tuple[float, float, float, str]:
    rows = batch_rows_per_day(w)
    rate = profile.peak.rows_per_s
    hours = rows / rate / 3600.0
    cost = hours * w.price_per_hour * (1 - w.spot_discount)
    how = (f"{_n(rows)} rows a day at {_n(rate)} rows/s (batch {profile.peak.batch_size}) = {hours:.4g} h"
           f"{f' on spot at {1 - w.spot_discount:.0%} of the price' if w.spot_discount else ''}")
    return rows, hours, cost, how


def pattern_costs(w: Workload, profile: Profile) -> dict[Pattern, PatternCost]:
    """The cost of each pattern for ``w`` on the machine ``profile`` measured."""
    per_m = w.requests_per_day / 1e6
    rows, hours, cost, how = _precompute(w, profile)
    batch = PatternCost(Pattern.BATCH, 0, hours, rows, profile.peak.rows_per_s, cost, cost / per_m, how)

    size, rate = online_rate(profile, w)
    online = _always_on(Pattern.ONLINE, w, rate, w.peak_rps, w.requests_per_day,
                        f"peak rps at batch {size}")
    live = _always_on(Pattern.HYBRID, w, rate, w.peak_rps * w.hybrid_miss_rate, 0.0,
                      f"live layer for {w.hybrid_miss_rate:.0%} misses at batch {size}")
    hybrid = PatternCost(Pattern.HYBRID, live.replicas, hours + live.machine_hours_per_day,
                         rows + w.requests_per_day * w.hybrid_miss_rate, rate, cost + live.cost_per_day,
                         (cost + live.cost_per_day) / per_m, f"precompute {how}; {live.sizing}")
    peak = profile.peak
    stream = _always_on(Pattern.STREAM, w, peak.rows_per_s, w.peak_rps, w.requests_per_day,
                        f"peak events/s in micro-batches of {peak.batch_size}")
    jobs = _always_on(Pattern.ASYNC, w, peak.rows_per_s, w.average_rps, w.requests_per_day,
                      f"average rps (the queue takes the peaks) at batch {peak.batch_size}")
    return {p.pattern: p for p in (batch, hybrid, jobs, stream, online)}


def _n(x: float) -> str:
    """12,345,678 for big numbers, 57.87 for small ones."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def money(x: float) -> str:
    """Dollars: 1,234 / 28.80 / 0.0003906."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}" if x >= 1 else f"{x:.4g}"
