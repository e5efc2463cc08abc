"""What a team tells the advisor about its predictions, checked once with messages that say how to fix.

    w = Workload(requests_per_day=5e6, peak_rps=300, p99_ms=100, freshness_s=3600,
                 inputs_at_request_time="no", price_per_hour=1.20, spot_discount=0.7)

The five questions of the seeds' decision framework are its fields: the latency a caller accepts
(``p99_ms``; None when nobody waits on an answer), the volume (``requests_per_day``, ``peak_rps``),
how fresh an answer must be (``freshness_s``), whether the inputs exist only at request time, and
what a machine costs (``price_per_hour``, ``spot_discount``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal, get_args

from inferlane.core.errors import ConfigError

InputsAt = Literal["yes", "no", "partly"]
"""yes: the inputs exist only when the request or event arrives (a card transaction, a query);
no: they are known ahead, per key (a customer's history); partly: a heavy part is known ahead and a
light part comes with the request (live re-ranking of precomputed candidates)."""
INPUTS_AT = get_args(InputsAt)


class Pattern(StrEnum):
    """The five ways inferlane runs a model (docs/architecture.md), cheapest to run first."""

    BATCH = "batch"
    """A schedule scores the whole key space; the results are read later."""
    HYBRID = "hybrid"
    """Batch precomputes answers into a key-value store; a thin online layer serves them by key."""
    ASYNC = "async"
    """Async jobs: a durable queue; the caller polls or gets a callback seconds to minutes later."""
    STREAM = "stream"
    """Events are scored in micro-batches as they arrive; results go to a topic or store."""
    ONLINE = "online"
    """A live endpoint answers each request while the caller waits."""


@dataclass(frozen=True, slots=True)
class Workload:
    requests_per_day: float
    """Predictions used per day."""
    peak_rps: float
    """Highest rate of requests or events per second."""
    p99_ms: float | None
    """The latency a caller accepts at the 99th percentile; None when nobody waits on an answer."""
    freshness_s: float
    """How old an answer may be when it is used, in seconds; 0: it must reflect the request itself."""
    inputs_at_request_time: InputsAt
    price_per_hour: float
    """Price of one machine (the one the profile ran on, or its equivalent) per hour."""
    spot_discount: float = 0.0
    """Discount of spot or preemptible machines (0.7: they cost 30 % of the price); batch uses them."""
    keys: float | None = None
    """Distinct keys batch and hybrid precompute on each run (customers, users); default:
    ``requests_per_day``."""
    hybrid_miss_rate: float = 0.05
    """Share of hybrid requests the live model answers (new keys, stale answers)."""

    def __post_init__(self) -> None:
        _positive("--requests-per-day", self.requests_per_day)
        _positive("--peak-rps", self.peak_rps)
        _positive("--price-per-hour", self.price_per_hour)
        if self.p99_ms is not None:
            _positive("--p99-ms", self.p99_ms)
        if not (math.isfinite(self.freshness_s) and self.freshness_s >= 0):
            raise ConfigError(f"--freshness must be 0 or a positive duration such as 5m or 1h, not {self.freshness_s}")
        if self.inputs_at_request_time not in INPUTS_AT:
            raise ConfigError(f"--inputs-at-request-time must be one of {', '.join(INPUTS_AT)}, "
                              f"not {self.inputs_at_request_time!r}")
        if not 0 <= self.spot_discount < 1:
            raise ConfigError(f"--spot-discount must be at least 0 and below 1 (0.7 means 70 % off), "
                              f"not {self.spot_discount}")
        if self.keys is not None:
            _positive("--keys", self.keys)
        if not 0 <= self.hybrid_miss_rate <= 1:
            raise ConfigError(f"--hybrid-miss-rate must be between 0 and 1, not {self.hybrid_miss_rate}")
        avg = self.requests_per_day / 86_400
        if self.peak_rps < avg * 0.999:
            raise ConfigError(f"--peak-rps {self.peak_rps:g} is below the average rate "
                              f"({self.requests_per_day:g} per day is {avg:.1f}/s): the peak is at least the average")

    @property
    def average_rps(self) -> float:
        return self.requests_per_day / 86_400

    @property
    def key_space(self) -> float:
        return self.keys if self.keys is not None else self.requests_per_day

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number, not {value:g}")
