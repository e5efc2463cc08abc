"""What ``/dashboard`` shows, computed from the same Prometheus series ``/metrics`` exports.

The page (transport/http/dashboard.py) asks for ``/dashboard/data`` every second. Each call reads the
registry's series once (:func:`read_series`; in ``--workers N`` mode every process's, merged, as
``/metrics`` does) and compares them with a reading a few seconds older: rates and percentiles are
deltas between two readings, as Prometheus' ``rate()`` and ``histogram_quantile()`` would give, so
the page and a Grafana panel over ``/metrics`` agree.

    view = DashboardView(lambda: read_series(metrics.scrape()))
    view.data(extra={"rollouts": [...]})   # {"time": ..., "window_s": ..., "versions": [...], "jobs": [...]}

Nothing here is admin-only: it is what ``/metrics`` already tells anyone who can reach the port,
summarised. The logic has no HTTP in it, so a test drives it with hand-made readings.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]
"""A sample's labels, sorted by name: hashable."""

WINDOW_S = 5.0
"""Rates and percentiles cover about this many seconds (at least the time since the previous reading)."""
_KEEP_EVERY_S = 0.5
"""Readings closer together than this are not kept (several open pages share the history)."""
_QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


@dataclass(frozen=True, slots=True)
class Reading:
    """Every sample of the registry at one moment: ``values[sample name][labels] = value``."""

    at: float
    """Monotonic seconds (rates divide by differences of these)."""
    values: Mapping[str, Mapping[Labels, float]]

    def series(self, name: str) -> Mapping[Labels, float]:
        return self.values.get(name, {})


def read_series(registry: CollectorRegistry, at: float | None = None) -> Reading:
    """One reading of ``registry`` (``_created`` samples are dropped: they are not values)."""
    values: dict[str, dict[Labels, float]] = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            values.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return Reading(time.monotonic() if at is None else at, values)


Key = tuple[str, str, str]
"""(model, version, lane)."""


def _key(labels: Labels) -> Key | None:
    d = dict(labels)
    if "model" not in d or "version" not in d or "lane" not in d:
        return None
    return d["model"], d["version"], d["lane"]


def _delta(now: float, before: float | None) -> float:
    """A counter's increase; a process that restarted (counter went down) counts from zero."""
    if before is None or now < before:
        return now
    return now - before


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """``histogram_quantile``: ``buckets`` are (upper bound, cumulative count) ascending, the last
    +Inf. Linear inside the bucket; the largest finite bound when the rank falls in +Inf; None
    without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


class DashboardView:
    """Keeps recent readings and answers ``/dashboard/data``. Thread-safe (one lock around the history)."""

    def __init__(self, read: Callable[[], Reading], window_s: float = WINDOW_S) -> None:
        self._read = read
        self.window_s = window_s
        self._history: deque[Reading] = deque()
        self._lock = threading.Lock()

    def _baseline(self, now: Reading) -> Reading | None:
        """The oldest kept reading inside the window (the newest older one if none is inside), and
        keep ``now`` for later calls."""
        with self._lock:
            while len(self._history) > 1 and now.at - self._history[1].at >= self.window_s:
                self._history.popleft()
            base = self._history[0] if self._history else None
            if not self._history or now.at - self._history[-1].at >= _KEEP_EVERY_S:
                self._history.append(now)
        return base

    def data(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        now = self._read()
        base = self._baseline(now)
        dt = now.at - base.at if base is not None else 0.0
        doc: dict[str, Any] = {
            "time": time.time(),
            "window_s": round(dt, 3) if dt > 0 else None,
            "versions": versions(now, base if dt > 0 else None, dt),
            "jobs": jobs(now),
        }
        doc.update(extra or {})
        return doc


def _sum_by_key(series: Mapping[Labels, float]) -> dict[Key, float]:
    out: dict[Key, float] = {}
    for labels, v in series.items():
        k = _key(labels)
        if k is not None:
            out[k] = out.get(k, 0.0) + v
    return out


def _gauge(now: Reading, name: str) -> dict[Key, float]:
    return _sum_by_key(now.series(name))


def _buckets(now: Reading, base: Reading | None, name: str) -> dict[Key, list[tuple[float, float]]]:
    """Per key, a histogram's cumulative buckets over the window (all time when ``base`` is None)."""
    before = base.series(name + "_bucket") if base is not None else {}
    out: dict[Key, dict[float, float]] = {}
    for labels, v in now.series(name + "_bucket").items():
        d = dict(labels)
        k = _key(labels)
        if k is None or "le" not in d:
            continue
        bucket = out.setdefault(k, {})
        bucket[float(d["le"])] = bucket.get(float(d["le"]), 0.0) + _delta(v, before.get(labels))
    return {k: sorted(b.items()) for k, b in out.items()}


def _counts(now: Reading, base: Reading | None, name: str) -> dict[Key, tuple[float, float]]:
    """Per key, a histogram's (count, sum) over the window."""
    out: dict[Key, tuple[float, float]] = {}
    for suffix, slot in (("_count", 0), ("_sum", 1)):
        before = base.series(name + suffix) if base is not None else {}
        for labels, v in now.series(name + suffix).items():
            k = _key(labels)
            if k is None:
                continue
            pair = list(out.get(k, (0.0, 0.0)))
            pair[slot] += _delta(v, before.get(labels))
            out[k] = (pair[0], pair[1])
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def _by_status(now: Reading, base: Reading | None) -> tuple[dict[Key, dict[str, float]], dict[Key, dict[str, float]]]:
    """Per key: requests by status all time, and over the window."""
    series = now.series("inferlane_requests_total")
    before = base.series("inferlane_requests_total") if base is not None else {}
    total: dict[Key, dict[str, float]] = {}
    window: dict[Key, dict[str, float]] = {}
    for labels, v in series.items():
        k = _key(labels)
        status = dict(labels).get("status")
        if k is None or status is None:
            continue
        total.setdefault(k, {})[status] = total.get(k, {}).get(status, 0.0) + v
        if base is not None:
            window.setdefault(k, {})[status] = window.get(k, {}).get(status, 0.0) + _delta(v, before.get(labels))
    return total, window


def versions(now: Reading, base: Reading | None, dt: float) -> list[dict[str, Any]]:
    """One row per (model, version, lane) that any request, batch or queue series names (jobs' ``*``
    rows excluded: see :func:`jobs`)."""
    total, window = _by_status(now, base)
    latency = _buckets(now, base, "inferlane_request_duration_seconds")
    forward = _buckets(now, base, "inferlane_forward_seconds")
    forward_counts = _counts(now, base, "inferlane_forward_seconds")
    queue_wait = _buckets(now, base, "inferlane_queue_wait_seconds")
    batch = _buckets(now, base, "inferlane_batch_size")
    batch_counts = _counts(now, base, "inferlane_batch_size")
    depth = _gauge(now, "inferlane_queue_depth")
    inflight = _gauge(now, "inferlane_inflight_batches")
    weight = _gauge(now, "inferlane_traffic_weight")
    keys = {k for k in (*total, *depth, *batch) if k[1] != "*"}
    rows = []
    for k in sorted(keys):
        in_window = window.get(k, {})
        count = sum(in_window.values())
        errors = {s: round(n / dt, 3) for s, n in sorted(in_window.items()) if s != "200" and n > 0} if dt else {}
        lat = latency.get(k, [])
        fwd_n, fwd_sum = forward_counts.get(k, (0.0, 0.0))
        bn, bsum = batch_counts.get(k, (0.0, 0.0))
        rows.append({
            "model": k[0], "version": k[1], "lane": k[2],
            "requests": {s: int(n) for s, n in sorted(total.get(k, {}).items())},
            "rps": round(count / dt, 3) if dt else None,
            "error_rate": round(sum(n for s, n in in_window.items() if s != "200") / count, 4) if count else None,
            "errors_per_s": errors,
            "latency_ms": {name: _ms(quantile(q, lat)) for name, q in _QUANTILES},
            "queue_wait_ms": {"p99": _ms(quantile(0.99, queue_wait.get(k, [])))},
            "forward_ms": {"mean": _ms(fwd_sum / fwd_n) if fwd_n else None,
                           "p99": _ms(quantile(0.99, forward.get(k, [])))},
            "batch_size": {"mean": round(bsum / bn, 2) if bn else None, "buckets": _spread(batch.get(k, []))},
            "queue_depth": depth.get(k, 0.0),
            "inflight_batches": inflight.get(k, 0.0),
            "traffic_weight": weight.get(k),
        })
    return rows


def _spread(cumulative: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Cumulative buckets as counts per bucket, ``le`` null for +Inf, empty buckets dropped."""
    out = []
    below = 0.0
    for upper, count in cumulative:
        n = count - below
        below = count
        if n > 0:
            out.append({"le": None if math.isinf(upper) else upper, "count": int(n)})
    return out


def jobs(now: Reading) -> list[dict[str, Any]]:
    """The jobs lane's backlog per model (its gauges carry version ``*``: queued by model)."""
    backlog = _gauge(now, "inferlane_jobs_backlog")
    running = _gauge(now, "inferlane_jobs_running")
    oldest = _gauge(now, "inferlane_jobs_oldest_queued_age_seconds")
    models = sorted({k[0] for k in (*backlog, *running, *oldest) if k[0] != "*"})
    return [{"model": m, "backlog": backlog.get((m, "*", "jobs"), 0.0), "running": running.get((m, "*", "jobs"), 0.0),
             "oldest_age_s": oldest.get((m, "*", "jobs"), 0.0)} for m in models]


def rollout_rows(statuses: Iterable[Any]) -> list[dict[str, Any]]:
    """The public part of each rollout's status (store/rollout.py RolloutStatus): the same facts as the
    ``inferlane_traffic_weight`` and ``inferlane_rollout_step`` series, and the state. Check details
    and the spec's thresholds stay behind the admin API."""
    return [{"model": s.model, "stable": s.stable, "canary": s.canary, "to_version": s.spec.to_version,
             "state": str(s.state), "step": s.step_index + 1, "steps": len(s.spec.steps),
             "weight": s.weight, "updated_at": s.updated_at} for s in statuses]
