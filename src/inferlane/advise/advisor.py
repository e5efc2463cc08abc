"""Which pattern a workload needs, why, what it costs, what would change the answer, and how to get there.

    advice = advise(workload, profile)
    advice.pattern             # Pattern.HYBRID
    advice.reasons             # in the seeds' terms: latency SLA, volume, freshness, inputs, cost
    advice.costs               # every pattern side by side, from the measured profile
    advice.what_would_change   # ["freshness under 5 min -> online", ...]
    advice.to_dict()           # JSON for --json and the dashboard

The rules follow the seeds' decision framework, least real-time first, because most teams
over-build real-time (docs/choosing.md, "The decision rules"):

1. Inputs known ahead (``no``) and answers may be 5 minutes old or more: precompute. A caller
   that waits under 10 s gets a key lookup (**hybrid**); nobody waiting gets a table (**batch**).
2. Inputs partly at request time, a caller waiting, answers 5 minutes old or more: precompute the
   heavy part, serve a thin live layer (**hybrid**).
3. Otherwise the answer needs inputs that are only there when the request or event arrives:
   - a caller waits under 10 s and the model answers in time (``2 x forward p99 <= p99``): **online**;
   - a caller waits under 10 s but the model cannot answer in time, or the caller accepts 10 s or
     more: a queue (**async jobs**);
   - nobody waits: answers needed within 5 minutes: **stream**; later: **batch** over the events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from inferlane.advise.costs import BATCH_MIN_PERIOD_S, PatternCost, money, online_rate, pattern_costs
from inferlane.advise.migration import migration
from inferlane.advise.profile import DELAY_SHARE, Profile, ProfilePoint
from inferlane.advise.workload import Pattern, Workload

SYNC_BELOW_MS = 10_000.0
"""A caller that accepts less than this waits synchronously; more is a job to poll."""
CHEAPER_BELOW = 0.9
"""A pattern that meets the needs for under 90 % of the recommended one's cost is worth a line."""
_CHEAPER_HINTS = {Pattern.BATCH: ", when the application can read the scores table itself, without a server"}


@dataclass(frozen=True, slots=True)
class Advice:
    pattern: Pattern
    reasons: tuple[str, ...]
    costs: tuple[PatternCost, ...]
    """Every pattern, cheapest first."""
    fits: dict[Pattern, str | None]
    """Per pattern: None when it meets the workload's needs, else why not."""
    what_would_change: tuple[str, ...]
    migration: tuple[str, ...]
    workload: Workload
    profile: Profile

    def cost_of(self, pattern: Pattern) -> PatternCost:
        return next(c for c in self.costs if c.pattern == pattern)

    def to_dict(self) -> dict[str, Any]:
        size, rate = online_rate(self.profile, self.workload)
        batching = None
        if self.workload.p99_ms is not None:
            b = self.profile.batching_for(self.workload.p99_ms)
            batching = {"max_batch_size": b.max_batch_size, "max_queue_delay_ms": b.max_queue_delay_ms,
                        "worst_case_ms": b.worst_case_ms, "fits": b.fits}
        return {
            "pattern": str(self.pattern),
            "reasons": list(self.reasons),
            "costs": [c.to_dict() | {"meets_needs": self.fits[c.pattern] is None,
                                     "why_not": self.fits[c.pattern]} for c in self.costs],
            "what_would_change": list(self.what_would_change),
            "migration": list(self.migration),
            "workload": self.workload.to_dict(),
            "profile": {"model": self.profile.model, "version": self.profile.version,
                        "device": self.profile.device, "knee_batch_size": self.profile.knee.batch_size,
                        "peak_rows_per_s": self.profile.peak.rows_per_s, "online_batch_size": size,
                        "online_rows_per_s": rate, "batching": batching},
        }


def _sync(w: Workload) -> bool:
    return w.p99_ms is not None and w.p99_ms < SYNC_BELOW_MS


def _model_in_time(w: Workload, profile: Profile) -> bool:
    return w.p99_ms is None or profile.batching_for(w.p99_ms).fits


def decide(w: Workload, profile: Profile) -> tuple[Pattern, list[str]]:
    """The rules of the module docstring: the pattern and the reasons, in order."""
    fresh = _fmt_s(w.freshness_s)
    who = ("nobody waits on an answer" if w.p99_ms is None
           else f"a caller waits, p99 {w.p99_ms:g} ms" if _sync(w)
           else f"the caller accepts {_fmt_s(w.p99_ms / 1e3)} or more (a job to poll, not a request to hold open)")
    precomputable = w.freshness_s >= BATCH_MIN_PERIOD_S
    if w.inputs_at_request_time == "no" and precomputable:
        inputs = f"the inputs are known before the request and an answer may be {fresh} old: precompute it"
        if _sync(w):
            return Pattern.HYBRID, [inputs, f"{who}: serve the stored answers by key (a lookup, about a "
                                            "millisecond), scoring new or stale keys live"]
        return Pattern.BATCH, [inputs, f"{who}: a scheduled job writes a table that is read later; "
                                       "the cheapest pattern, with spot machines"]
    if w.inputs_at_request_time == "partly" and precomputable and _sync(w):
        return Pattern.HYBRID, [f"the heavy inputs are known ahead and may be {fresh} old: precompute them in batch",
                                f"{who} and part of the input comes with the request: a thin live layer "
                                "re-ranks or completes the stored answer"]
    if w.inputs_at_request_time == "no":
        needs = f"the inputs are known ahead but an answer must be under {_fmt_s(BATCH_MIN_PERIOD_S)} old"
    elif w.inputs_at_request_time == "partly" and not precomputable:
        needs = f"part of the input comes with the request and answers must be under {_fmt_s(BATCH_MIN_PERIOD_S)} old"
    else:
        needs = "the inputs exist only when the request or event arrives"
    if _sync(w):
        if _model_in_time(w, profile):
            b = profile.batching_for(w.p99_ms or 0)
            return Pattern.ONLINE, [needs, f"{who}: only a live endpoint answers in time (batch {b.max_batch_size}, "
                                           f"delay {b.max_queue_delay_ms:g} ms, worst case {b.worst_case_ms:.1f} ms)"]
        one = _fastest(profile)
        return Pattern.ASYNC, [needs, f"{who}, but one forward pass takes {one.p99_ms:,.1f} ms (p99): no synchronous "
                                      "pattern meets the budget; queue the work and let the caller poll or get a "
                                      "callback (or make the model faster)"]
    if w.p99_ms is not None:
        return Pattern.ASYNC, [needs, f"{who}: a durable queue decouples the work from the request, and workers "
                                      "sized for the average rate (not the peak) run large batches"]
    if w.freshness_s < BATCH_MIN_PERIOD_S:
        return Pattern.STREAM, [needs, f"{who} and answers must be under {_fmt_s(BATCH_MIN_PERIOD_S)} old "
                                       f"({fresh}): score events continuously in micro-batches"]
    return Pattern.BATCH, [needs, f"{who} and an answer may be {fresh} old: collect the events and score "
                                  "them on a schedule, the cheapest pattern"]


def fits(w: Workload, profile: Profile) -> dict[Pattern, str | None]:
    """Per pattern: None when it meets the workload's needs, else why not (for the cost table)."""
    out: dict[Pattern, str | None] = {}
    stale_ok = w.freshness_s >= BATCH_MIN_PERIOD_S
    in_time = _model_in_time(w, profile)
    out[Pattern.BATCH] = (
        "answers must be fresher than a schedule can keep them" if not stale_ok
        else "a caller waits for inputs that exist only at request time" if w.inputs_at_request_time != "no"
        and w.p99_ms is not None else None)
    out[Pattern.HYBRID] = (
        "nothing to precompute: the inputs exist only at request time" if w.inputs_at_request_time == "yes"
        else "answers must be fresher than a schedule can keep them" if not stale_ok
        else "the live layer cannot answer within the p99" if not in_time else None)
    out[Pattern.ASYNC] = (f"a caller waits synchronously (p99 {w.p99_ms:g} ms); a job answers in seconds to minutes"
                          if _sync(w) else None)
    out[Pattern.STREAM] = (f"a caller waits for the answer (p99 {w.p99_ms:g} ms); a stream writes to a topic"
                           if w.p99_ms is not None else None)
    out[Pattern.ONLINE] = None if in_time else "one forward pass does not fit the p99 budget"
    return out


@dataclass(frozen=True, slots=True)
class _Probe:
    dimension: str
    category: str
    label: str
    change: Callable[[Workload], Workload]


_PROBES = (
    _Probe("freshness", "fresh", "answers needed in under 5 min", lambda w: replace(w, freshness_s=60.0)),
    _Probe("freshness", "stale", "answers may be an hour old or more",
           lambda w: replace(w, freshness_s=max(w.freshness_s, 3600.0))),
    _Probe("inputs", "yes", "inputs only at request time", lambda w: replace(w, inputs_at_request_time="yes")),
    _Probe("inputs", "no", "inputs known ahead", lambda w: replace(w, inputs_at_request_time="no")),
    _Probe("inputs", "partly", "inputs partly at request time",
           lambda w: replace(w, inputs_at_request_time="partly")),
    _Probe("caller", "nobody", "nobody waiting on answers", lambda w: replace(w, p99_ms=None)),
    _Probe("caller", "sync", "a caller waiting with a p99 of 100 ms", lambda w: replace(w, p99_ms=100.0)),
    _Probe("caller", "tolerant", "a caller that accepts a minute (polls for a job)",
           lambda w: replace(w, p99_ms=60_000.0)),
)


def _category(dimension: str, w: Workload) -> str:
    if dimension == "freshness":
        return "fresh" if w.freshness_s < BATCH_MIN_PERIOD_S else "stale"
    if dimension == "inputs":
        return w.inputs_at_request_time
    return "nobody" if w.p99_ms is None else "sync" if _sync(w) else "tolerant"


def what_would_change(w: Workload, profile: Profile, pattern: Pattern) -> list[str]:
    """Each single change of the workload (or the model's speed) that gives another pattern, with it;
    found by asking the rules again, so the lines cannot disagree with them."""
    lines = []
    for probe in _PROBES:
        if _category(probe.dimension, w) == probe.category:
            continue
        other, _ = decide(probe.change(w), profile)
        if other != pattern:
            lines.append(f"{probe.label} -> {other}")
    if _sync(w) and pattern in (Pattern.ONLINE, Pattern.HYBRID):
        one = _fastest(profile)
        limit = (w.p99_ms or 0) * (1 - DELAY_SHARE) / 2
        slower = profile.scaled(limit / one.p99_ms * 1.2)
        other, _ = decide(w, slower)
        if other != pattern:
            lines.append(f"a model slower than {limit:,.1f} ms per forward pass (now {one.p99_ms:,.2f} ms) -> {other}")
    costs = pattern_costs(w, profile)
    here = costs[pattern]
    ok = fits(w, profile)
    cheaper = [c for c in costs.values() if c.cost_per_day < CHEAPER_BELOW * here.cost_per_day
               and ok[c.pattern] is None and c.pattern != pattern]
    for c in sorted(cheaper, key=lambda c: c.cost_per_day):
        lines.append(f"cost first: {c.pattern} also meets these needs for ${money(c.cost_per_million)} per million "
                     f"(vs ${money(here.cost_per_million)}){_CHEAPER_HINTS.get(c.pattern, '')}")
    return lines


def advise(workload: Workload, profile: Profile, *, current: Pattern | None = None,
           model_folder: str = "./models/MODEL") -> Advice:
    """The pattern for ``workload`` on the machine ``profile`` measured, with its reasons, the cost
    of every pattern, what would change the answer and the path from ``current``."""
    pattern, reasons = decide(workload, profile)
    costs = pattern_costs(workload, profile)
    ok = fits(workload, profile)
    mine = costs[pattern]
    reasons.append(f"cost: ${money(mine.cost_per_day)} a day, ${money(mine.cost_per_million)} per million predictions "
                   f"({mine.sizing})")
    online = costs[Pattern.ONLINE]
    if pattern != Pattern.ONLINE and online.cost_per_day > mine.cost_per_day:
        times = online.cost_per_day / max(mine.cost_per_day, 1e-12)
        reasons.append(f"real-time would cost {times:,.0f}x as much" if times >= 100 else
                       f"real-time would cost {times:.1f}x as much")
        reasons[-1] += f" (${money(online.cost_per_million)} per million): most teams over-build real-time"
    ordered = tuple(sorted(costs.values(), key=lambda c: c.cost_per_day))
    steps = migration(current, pattern, workload, profile, model_folder, costs)
    return Advice(pattern, tuple(reasons), ordered, ok, tuple(what_would_change(workload, profile, pattern)),
                  tuple(steps), workload, profile)


def _fastest(profile: Profile) -> ProfilePoint:
    """The measured size up to the knee with the lowest forward p99 (usually the smallest)."""
    return min((p for p in profile.points if p.batch_size <= profile.knee.batch_size), key=lambda p: p.p99_ms)


def _fmt_s(seconds: float) -> str:
    if seconds == 0:
        return "0 s (the request itself)"
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds * 1e3:g} ms"
