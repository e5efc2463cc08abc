"""What a run measured, judged: percentiles, throughput, answers by status, failures by cause,
and whether the generator itself kept up, as a table for people and a dict for ``--json``.

An open-loop figure is only worth something if the requests went out when they were due, so the
report says how the send rate compares with the target, how late the generator was (its own
lateness, separate from waiting for a free connection) and how much of its core it used; when
the generator was the bottleneck it says so in a warning line instead of printing quietly
slower figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inferlane.bench.engine import Tally

PERCENTILES = (50.0, 95.0, 99.0, 99.9)
BEHIND_LATE_P99_S = 0.005
"""The generator fell behind when its own lateness reaches this at p99 (timers alone are ~1 ms late)."""
SATURATED_CPU = 0.90
"""... or when it used this share of its core(s)."""
SENT_SHORT = 0.95
"""... or when it sent less than this share of the target rate."""
BUSY_WAITED = 0.01


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


@dataclass(frozen=True)
class Report:
    mode: str
    """``open`` (a target rate) or ``closed`` (a concurrency)."""
    url: str
    connections: int
    processes: int
    duration_s: float
    warmup_s: float
    target_rate: float | None
    completed: int
    """Answers to the requests of the measured window (the latencies' count), whenever they arrived."""
    throughput: float
    """Answers (any status) that arrived per second during the measured window (an overloaded
    server's capacity, not the offered rate)."""
    latency_ms: dict[str, float]
    """p50, p95, p99, p99.9, max and mean, in milliseconds."""
    statuses: dict[int, int]
    errors: dict[str, int]
    sent_rate: float | None
    scheduled_rate: float | None
    """Open loop: the arrivals the Poisson schedule drew per second (the target rate, give or take chance)."""
    send_lag_ms: dict[str, float]
    late_ms: dict[str, float]
    waited_share: float
    cpu_share: float
    """CPU of the generator process(es) over the run, as a share of one core per process."""
    reconnect_failures: int
    warnings: list[str] = field(default_factory=list)

    @property
    def p99_ms(self) -> float:
        return self.latency_ms["p99"]

    @property
    def error_share(self) -> float:
        bad = sum(v for k, v in self.statuses.items() if k >= 500) + sum(self.errors.values())
        total = self.completed + sum(self.errors.values())
        return bad / total if total else 1.0

    @property
    def generator_behind(self) -> bool:
        """The generator, not the server, limited this run."""
        return any(w.startswith("generator") for w in self.warnings)

    def to_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items()}
        doc["statuses"] = {str(k): v for k, v in self.statuses.items()}
        doc["generator_behind"] = self.generator_behind
        return doc


def build_report(tally: Tally, *, mode: str, url: str, connections: int, processes: int, duration_s: float,
                 warmup_s: float, target_rate: float | None) -> Report:
    lat = tally.latencies
    latency = {f"p{q:g}": _ms(lat, q) for q in PERCENTILES}
    latency["max"] = max(lat) * 1e3 if lat else float("nan")
    latency["mean"] = float(np.mean(lat)) * 1e3 if lat else float("nan")
    window = tally.window_s or duration_s
    sent_rate = tally.sent_in_window / window if mode == "open" else None
    cpu = tally.cpu_s / tally.wall_s / processes if tally.wall_s else 0.0
    report = Report(
        mode=mode, url=url, connections=connections, processes=processes, duration_s=duration_s, warmup_s=warmup_s,
        target_rate=target_rate, completed=len(lat), throughput=tally.answered_in_window / window, latency_ms=latency,
        statuses=dict(sorted(tally.statuses.items())), errors=dict(sorted(tally.errors.items())),
        sent_rate=sent_rate, scheduled_rate=tally.scheduled / window if mode == "open" else None,
        send_lag_ms={"p50": _ms(tally.send_lags, 50), "p99": _ms(tally.send_lags, 99),
                     "max": max(tally.send_lags) * 1e3 if tally.send_lags else float("nan")},
        late_ms={"p50": _ms(tally.late, 50), "p99": _ms(tally.late, 99),
                 "max": max(tally.late) * 1e3 if tally.late else float("nan")},
        waited_share=tally.waited / tally.scheduled if tally.scheduled else 0.0,
        cpu_share=cpu, reconnect_failures=tally.reconnect_failures)
    report.warnings.extend(_warnings(report))
    return report


def _warnings(r: Report) -> list[str]:
    """Warnings about the generator start with "generator" (``Report.generator_behind`` reads them)."""
    out = []
    short = (r.sent_rate is not None and bool(r.scheduled_rate)
             and r.sent_rate < SENT_SHORT * (r.scheduled_rate or 0.0))
    if r.mode == "open" and r.target_rate:
        if r.late_ms["p99"] >= BEHIND_LATE_P99_S * 1e3:
            out.append(f"generator fell behind its schedule: its own lateness p99 {r.late_ms['p99']:.1f} ms "
                       "(latencies include it; add --processes or lower --rate)")
        if r.waited_share >= BUSY_WAITED:
            sent = (f"; {r.sent_rate:,.0f} of {r.scheduled_rate:,.0f} req/s scheduled were sent in the window"
                    if short and r.sent_rate is not None and r.scheduled_rate else "")
            out.append(f"server slower than the rate: {r.waited_share:.1%} of requests found all {r.connections} "
                       f"connections busy and queued (their wait counts in the latency, as a user's would){sent}")
        elif short and r.sent_rate is not None and r.scheduled_rate:
            out.append(f"generator sent {r.sent_rate:,.0f} req/s of the {r.scheduled_rate:,.0f} scheduled "
                       f"({r.sent_rate / r.scheduled_rate:.0%})")
    if r.cpu_share >= SATURATED_CPU:
        out.append(f"generator used {r.cpu_share:.0%} of its core: it may be the bottleneck (add --processes)")
    if r.reconnect_failures:
        out.append(f"{r.reconnect_failures} failed attempts to reopen a dropped connection")
    return out


def _fmt(ms: float) -> str:
    return "-" if ms != ms else f"{ms:.2f} ms" if ms < 100 else f"{ms:.0f} ms"


def render(r: Report) -> str:
    """The report as text: one header line, one figures table, the details and the warnings."""
    if r.mode == "open":
        how = f"open loop: Poisson arrivals at {r.target_rate:,.0f} req/s"
    else:
        how = "closed loop: one request in flight per connection"
    lines = [f"POST {r.url}",
             f"{how}, {r.connections} connection(s), {r.processes} process(es), "
             f"{r.duration_s:g} s measured after {r.warmup_s:g} s warm-up", ""]
    head = ["requests", "throughput", "p50", "p95", "p99", "p99.9", "max"]
    row = [f"{r.completed:,}", f"{r.throughput:,.1f}/s", *(_fmt(r.latency_ms[k]) for k in
                                                          ("p50", "p95", "p99", "p99.9", "max"))]
    widths = [max(len(a), len(b)) for a, b in zip(head, row, strict=True)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    lines.append("")
    statuses = ", ".join(f"{k}: {v:,}" for k, v in r.statuses.items()) or "none"
    errors = ", ".join(f"{k}: {v:,}" for k, v in r.errors.items()) or "none"
    lines.append(f"statuses    {statuses}")
    lines.append(f"no answer   {errors}")
    if r.mode == "open" and r.scheduled_rate and r.sent_rate is not None:
        lines.append(f"sent        {r.sent_rate:,.0f} req/s of {r.scheduled_rate:,.0f} scheduled "
                     f"({r.sent_rate / r.scheduled_rate:.1%}; target {r.target_rate:,.0f})")
        lines.append(f"send lag    p50 {_fmt(r.send_lag_ms['p50'])}, p99 {_fmt(r.send_lag_ms['p99'])}, "
                     f"max {_fmt(r.send_lag_ms['max'])} (generator's own: p99 {_fmt(r.late_ms['p99'])}); "
                     f"{r.waited_share:.1%} waited for a free connection")
    lines.append(f"generator   {r.cpu_share:.0%} of one core per process")
    lines += [f"! {w}" for w in r.warnings]
    return "\n".join(lines)
