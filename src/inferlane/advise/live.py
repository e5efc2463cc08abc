"""The advisor on a running server: a profile from what serving measured, and a workload from a query.

    prof = profile_from_stats("fraud", "1", "onnx", metrics.stats_doc("fraud", "1"))
    workload = workload_from_query({"requests_per_day": "5e6", "peak_rps": "300", "p99_ms": "100",
                                    "freshness": "1h", "inputs_at_request_time": "no", "price_per_hour": "1.2"})
    advise(workload, prof)

A server cannot run ``inferlane profile`` on itself (timing forward passes at every batch size would
take its cores from the traffic), but its statistics extension already holds the forward passes it
ran, by batch size, with their total time: their means are a profile of this model on this machine,
under real traffic, at the batch sizes the traffic formed. It is thinner than a measured profile (no
p99 per size, only the sizes seen), which the advice says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from inferlane.advise.profile import Profile, ProfilePoint
from inferlane.advise.workload import INPUTS_AT, InputsAt, Workload
from inferlane.core.duration import parse_duration
from inferlane.core.errors import ConfigError

SERVING = "measured while serving: mean forward time of the passes the traffic formed, by batch size"


def profile_from_stats(model: str, version: str, runtime: str, stats: Mapping[str, Any], *,
                       threads: int = 0, min_passes: int = 3) -> Profile:
    """The forward passes the statistics extension counted (``ModelStats.doc``), as a profile: per batch
    size with at least ``min_passes`` passes, the mean time (as p50 and p99). ConfigError when no size
    has enough yet."""
    points = []
    for entry in stats.get("batch_stats") or []:
        infer = entry.get("compute_infer") or {}
        passes, ns, size = int(infer.get("count", 0)), int(infer.get("ns", 0)), int(entry.get("batch_size", 0))
        if passes < min_passes or ns <= 0 or size < 1:
            continue
        ms = ns / passes / 1e6
        points.append(ProfilePoint(size, passes, ms, ms, size / (ms / 1e3), 0, 0))
    if not points:
        raise ConfigError(f"model {model} version {version} has run fewer than {min_passes} forward passes of any "
                          "batch size yet: send it traffic, or profile it with inferlane profile")
    return Profile(model, version, runtime, "cpu", threads, SERVING, tuple(sorted(points, key=lambda p: p.batch_size)))


def _number(query: Mapping[str, str], name: str, default: float | None = None) -> float | None:
    text = query.get(name)
    if text is None or text == "":
        if default is None:
            return None
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {text[:40]!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {text[:40]!r}")
    return value


def workload_from_query(query: Mapping[str, str]) -> Workload:
    """A Workload from the dashboard's form (the names of ``inferlane advise``'s flags, with ``_``);
    ConfigError names the field at fault."""
    unknown = set(query) - {"model", "version", "requests_per_day", "peak_rps", "p99_ms", "freshness",
                            "inputs_at_request_time", "price_per_hour", "spot_discount", "keys", "hybrid_miss_rate"}
    if unknown:
        raise ConfigError(f"unknown advisor fields {sorted(unknown)[:5]}")
    required = {}
    for name in ("requests_per_day", "peak_rps", "price_per_hour"):
        value = _number(query, name)
        if value is None:
            raise ConfigError(f"{name} is required")
        required[name] = value
    fresh = (query.get("freshness") or "0").strip()
    try:
        freshness = 0.0 if fresh.lower() in ("0", "none", "live") else parse_duration(fresh)
    except ValueError as e:
        raise ConfigError(f"freshness: {e}") from None
    inputs = query.get("inputs_at_request_time", "yes")
    if inputs not in INPUTS_AT:
        raise ConfigError(f"inputs_at_request_time must be one of {', '.join(INPUTS_AT)}")
    return Workload(requests_per_day=required["requests_per_day"], peak_rps=required["peak_rps"],
                    p99_ms=_number(query, "p99_ms"), freshness_s=freshness,
                    inputs_at_request_time=cast(InputsAt, inputs),
                    price_per_hour=required["price_per_hour"],
                    spot_discount=_number(query, "spot_discount", 0.0) or 0.0, keys=_number(query, "keys"),
                    hybrid_miss_rate=_number(query, "hybrid_miss_rate", 0.05) or 0.0)
