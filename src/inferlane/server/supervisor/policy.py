"""When to add or remove a replica: the scale policy of ``inferlane serve --replicas MIN..MAX``.

    policy = ScalePolicy(ReplicaRange.parse("2..8"), target=20, up_window_s=10, down_window_s=60)
    step = policy.observe(now=clock(), load=57.0, replicas=2)   # +1, -1 or 0, with the reason

Load is requests waiting plus batches running, summed over every model and replica
(docs/scaling.md). The policy adds one replica once ``ceil(load / target)`` has stayed above the
replica count for ``up_window_s``, and removes one once it has stayed below for ``down_window_s``
(longer: scale down slowly), never leaving MIN..MAX. Time is passed in, so tests drive it by hand.

Queue depth alone can undershoot on the way down: replicas that keep up without queueing report a
small load even when they are nearly saturated, and removing one would make the queue grow back
(and the replicas flap). So when the replicas' CPU use is known (``busy_cpus``, measured by the
supervisor), a replica is removed only if what they use now would fit the replicas left at
``DOWN_BUSY_LIMIT`` of their capacity: one CPU per replica (its event loop), at most the CPUs the
machine lets the server use.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from inferlane.core.errors import ConfigError

MAX_REPLICAS = 256
_RANGE = re.compile(r"^\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?$")


@dataclass(frozen=True, slots=True)
class ReplicaRange:
    """``--replicas MIN..MAX`` (or ``N``: a fixed count)."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> ReplicaRange:
        m = _RANGE.match(text)
        if m is None:
            raise ConfigError(f"--replicas {text!r}: expected MIN..MAX with two whole numbers (e.g. 2..8), or N")
        low = int(m.group(1))
        high = int(m.group(2)) if m.group(2) is not None else low
        if low < 1:
            raise ConfigError(f"--replicas {text}: MIN must be at least 1 (a replica stays warm: no cold start "
                              "on the hot path)")
        if low > high:
            raise ConfigError(f"--replicas {text}: MIN ({low}) is above MAX ({high}); write MIN..MAX")
        if high > MAX_REPLICAS:
            raise ConfigError(f"--replicas {text}: MAX must be at most {MAX_REPLICAS}")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low}..{self.high}"


@dataclass(frozen=True, slots=True)
class ScaleStep:
    """One decision: ``delta`` replicas to add (+1) or remove (-1), and why, in words for the log."""

    delta: int
    reason: str


HOLD = ScaleStep(0, "")
DOWN_BUSY_LIMIT = 0.7
"""Scale down only if the replicas left would be busy below this share of their CPUs."""


class ScalePolicy:
    def __init__(self, replicas: ReplicaRange, target: int, up_window_s: float, down_window_s: float,
                 cpus: int = 1 << 30) -> None:
        if target < 1:
            raise ConfigError("the target queue per replica must be at least 1")
        if up_window_s < 0 or down_window_s < 0:
            raise ConfigError("scale windows must be zero or more seconds")
        self.range = replicas
        self.target = target
        self.up_window_s = up_window_s
        self.down_window_s = down_window_s
        self.cpus = cpus
        """CPUs the server may use on this machine (core/cpus.py): what the replicas share."""
        self._above_since: float | None = None
        self._below_since: float | None = None

    def desired(self, load: float) -> int:
        """ceil(load / target), within MIN..MAX."""
        return min(self.range.high, max(self.range.low, math.ceil(load / self.target)))

    def fits_fewer(self, busy_cpus: float | None, replicas: int) -> bool:
        """Whether ``busy_cpus`` (the replicas' CPU use now; None: unknown) would fit one replica fewer."""
        if busy_cpus is None:
            return True
        return busy_cpus <= DOWN_BUSY_LIMIT * min(replicas - 1, self.cpus)

    def observe(self, now: float, load: float, replicas: int, busy_cpus: float | None = None) -> ScaleStep:
        """The step to take at ``now``; ``busy_cpus``: the CPUs the replicas use now (None: unknown),
        which must fit one replica fewer before one is removed."""
        want = self.desired(load)
        if want > replicas:
            self._below_since = None
            if self._above_since is None:
                self._above_since = now
            if now - self._above_since >= self.up_window_s:
                self._above_since = now  # the next step needs a whole window of its own
                return ScaleStep(+1, f"load {load:g} above target {self.target} x {replicas} replica(s) "
                                     f"for {self.up_window_s:g} s")
            return HOLD
        self._above_since = None
        if want < replicas and self.fits_fewer(busy_cpus, replicas):
            if self._below_since is None:
                self._below_since = now
            if now - self._below_since >= self.down_window_s:
                self._below_since = now
                busy = "" if busy_cpus is None else f", using {busy_cpus:.2f} CPU"
                return ScaleStep(-1, f"load {load:g} fits {replicas - 1} replica(s) at target {self.target}{busy} "
                                     f"for {self.down_window_s:g} s")
            return HOLD
        self._below_since = None
        return HOLD
