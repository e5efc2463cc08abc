"""The canary checks: error rate, p99 latency ratio and output drift (PSI), canary against stable.

    verdict = judge(spec, canary, stable, final=False)   # Summary of each side (rollout/stats.py)
    verdict.breach        # None, or the failed check with both values, the limit and the samples
    verdict.measured      # every check had the samples it needs

A check runs once its side has the samples it needs: error rate at ``min(min_samples, 100)``
canary outcomes; p99 ratio and PSI at ``min_samples / 5`` on each side. During a window
(``final=False``) a check breaches only when the breach is clear beyond sampling noise, so a bad
canary is stopped within a tick while a good one is not stopped by chance; at the window's end
(``final=True``) the plain limits apply (docs/rollouts.md, "Checks").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from inferlane.rollout.stats import Summary, psi_test
from inferlane.store.rollout import RolloutSpec

LATENCY_FLOOR_S = 0.001
"""Latencies below 1 ms count as 1 ms in the p99 ratio: sub-millisecond jitter is not a regression."""
Z = 3.0
"""Standard deviations a mid-window measurement must clear its limit by."""


@dataclass(frozen=True)
class Verdict:
    checks: dict[str, Any] = field(default_factory=dict)
    """JSON-ready values of every check (for ``RolloutStatus.last_checks``)."""
    breach: dict[str, Any] | None = None
    """The first failed check: check, canary, stable, limit, samples (and the output for PSI)."""
    measured: bool = False
    """Every check had the samples it needs."""


def wilson_lower(errors: int, n: int, z: float = Z) -> float:
    """The lower end of the Wilson score interval of an error rate."""
    if n == 0:
        return 0.0
    p = errors / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 6)


def judge(spec: RolloutSpec, canary: Summary, stable: Summary, *, final: bool) -> Verdict:
    """Compare ``canary`` with ``stable`` over one window (see the module docstring)."""
    checks: dict[str, Any] = {"canary": canary.describe(), "stable": stable.describe()}
    breaches: list[dict[str, Any]] = []
    measured = True
    need_errors = min(spec.min_samples, 100)
    need_each = max(1, spec.min_samples // 5)

    # error rate (canary's own: a version failing its requests)
    if canary.samples >= need_errors:
        rate = canary.error_rate
        lower = wilson_lower(canary.errors, canary.samples)
        checks["error_rate"] = {"canary": round(rate, 6), "stable": round(stable.error_rate, 6),
                                "limit": spec.max_error_rate}
        if (rate if final else lower) > spec.max_error_rate:
            breaches.append({"check": "error_rate", "canary": round(rate, 6), "stable": round(stable.error_rate, 6),
                             "limit": spec.max_error_rate, "samples": canary.samples})
    else:
        measured = False

    # p99 latency ratio; mid-window also the median must be slower (one outlier is not a breach)
    if len(canary.latencies) >= need_each and len(stable.latencies) >= need_each:
        c99, s99 = canary.quantile(0.99), stable.quantile(0.99)
        ratio = max(c99, LATENCY_FLOOR_S) / max(s99, LATENCY_FLOOR_S)
        median = max(canary.quantile(0.5), LATENCY_FLOOR_S) / max(stable.quantile(0.5), LATENCY_FLOOR_S)
        checks["p99_ratio"] = {"ratio": round(ratio, 4), "canary": _r(c99), "stable": _r(s99),
                               "limit": spec.max_p99_ratio}
        if ratio > spec.max_p99_ratio and (final or median > spec.max_p99_ratio):
            breaches.append({"check": "p99_ratio", "canary": _r(c99), "stable": _r(s99), "ratio": round(ratio, 4),
                             "limit": spec.max_p99_ratio, "samples": len(canary.latencies)})
    else:
        measured = False

    # PSI of each numeric output, beyond its sampling noise
    enough = canary.samples - canary.errors >= need_each and stable.samples - stable.errors >= need_each
    if enough:
        found: dict[str, Any] = {}
        for name in sorted(canary.values.keys() & stable.values.keys()):
            c, s = canary.values[name], stable.values[name]
            if not len(c) or not len(s):
                continue
            t = psi_test(s, c)
            found[name] = {"psi": round(t.value, 6), "raw": round(t.raw, 6), "noise": round(t.noise, 6)}
            if (t.value if final else t.value - Z * t.sd) > spec.max_psi:
                breaches.append({"check": "psi", "output": name, "canary": round(t.value, 6), "stable": 0.0,
                                 "limit": spec.max_psi, "samples": canary.samples, "raw": round(t.raw, 6)})
        checks["psi"] = found
    else:
        measured = False
    return Verdict(checks, breaches[0] if breaches else None, measured)


def compare_shadow(spec: RolloutSpec, shadow: Summary, stable: Summary) -> dict[str, Any]:
    """Shadow mode: how the mirrored answers compare with the live ones to the same inputs."""
    out: dict[str, Any] = {"shadow": shadow.describe(), "stable": stable.describe(),
                           "compared": shadow.compared,
                           "agreement": round(shadow.agreed / shadow.compared, 6) if shadow.compared else None}
    psi: dict[str, Any] = {}
    for name in sorted(shadow.values.keys() & shadow.live_values.keys()):
        c, s = shadow.values[name], shadow.live_values[name]
        if len(c) and len(s):
            t = psi_test(s, c)
            psi[name] = {"psi": round(t.value, 6), "raw": round(t.raw, 6), "limit": spec.max_psi}
    out["psi"] = psi
    if len(shadow.latencies) and len(stable.latencies):
        s99, l99 = shadow.quantile(0.99), stable.quantile(0.99)
        out["p99_ratio"] = {"ratio": round(max(s99, LATENCY_FLOOR_S) / max(l99, LATENCY_FLOOR_S), 4),
                            "shadow": _r(s99), "stable": _r(l99), "limit": spec.max_p99_ratio}
    return out
