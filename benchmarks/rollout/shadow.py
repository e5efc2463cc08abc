"""Scenario 3, shadow: the live p99 while ``--shadow`` mirrors a share of requests to another version,
against the same load without shadowing, in one open-loop run with the two interleaved.

The run alternates phases, ``off`` and ``on``, in the order off-on, on-off, ... so that a drift of
the machine during the run weighs on both alike. An ``on`` phase starts with ``rollout start --to 2
--shadow P`` and ends with ``rollout abort`` (which unloads the shadow version); each phase measures
only the requests due in its middle, from SETTLE_S after the switch for ``phase_s`` seconds, so the
version's load, warm-up and unload stay outside the figures.

The p99 of each mode is the **median of its phases' p99s**: one phase disturbed by something else
on the machine (a 60 ms stall in an off phase was seen) moves a pooled p99 by itself, and the median
of several phases does not. The pooled p99 is reported beside it. With ``profile_to``, py-spy records
the server during the first on phase and the first off phase (``shadow-on.txt``, ``shadow-off.txt``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.rollout.load import open_loop
from benchmarks.rollout.models import GOOD, MODEL
from benchmarks.rollout.rig import Rig
from inferlane.testing import cpu_seconds, start_py_spy

SETTLE_S = 0.5
"""After a switch (shadow on, or the abort done), before a phase's measured span begins."""


@dataclass(frozen=True)
class Phase:
    mode: str
    """``on`` (shadowing) or ``off``."""
    start: float
    end: float
    """The measured span, time.monotonic()."""
    server_cpu: float
    """The server's CPU time over the span (1.0: its whole core)."""


@dataclass
class ShadowResult:
    percent: float
    phases: list[Phase]
    p50_ms: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    """Per mode, the median of its phases' p99s."""
    pooled_p99_ms: dict[str, float] = field(default_factory=dict)
    """Per mode, over every request due in that mode's measured spans together."""
    requests: dict[str, int] = field(default_factory=dict)
    phase_p99_ms: list[tuple[str, float, float]] = field(default_factory=list)
    """Per phase, in order: mode, p99, server CPU."""
    failed: int = 0
    """Failed live requests in the whole run (a shadow never changes a live answer)."""
    compared: int = 0
    """Shadow copies compared with the live answer (``last_checks`` before each abort)."""
    agreed: int = 0
    """Of those, copies whose outputs equal the live answer's."""
    dropped: float = 0.0
    """Copies dropped (over 64 at once; ``inferlane_shadow_dropped_total``)."""
    rate: float = 0.0

    @property
    def ratio(self) -> float:
        return self.p99_ms["on"] / self.p99_ms["off"] if self.p99_ms.get("off") else float("nan")


def _order(pairs: int) -> list[str]:
    return [mode for i in range(pairs) for mode in (("off", "on") if i % 2 == 0 else ("on", "off"))]


def run_shadow(rig: Rig, percent: float, pairs: int, phase_s: float,
               profile_to: Path | None = None) -> ShadowResult:
    result = ShadowResult(percent, [])
    profiled: set[str] = set()
    with open_loop(rig.server.port, rig.rate, rig.work / "shadow.json", rig.cores.client_prefix) as run:
        for mode in _order(pairs):
            if mode == "on":
                rig.admin.start(to=GOOD, shadow=percent, window_s=1.0)
            time.sleep(SETTLE_S)
            spy = None
            if profile_to is not None and mode not in profiled:
                profiled.add(mode)
                spy = start_py_spy(rig.server.proc.pid, profile_to / f"shadow-{mode}.txt",
                                   duration_s=max(1, int(phase_s)), prefix=rig.cores.client_prefix)
            start, cpu = time.monotonic(), cpu_seconds(rig.server.proc.pid)
            time.sleep(phase_s)
            end = time.monotonic()
            if spy is not None:
                spy.wait(30)
            result.phases.append(Phase(mode, start, end, (cpu_seconds(rig.server.proc.pid) - cpu) / (end - start)))
            if mode == "on":
                checks = rig.admin.status().get("last_checks") or {}
                compared = int(checks.get("compared") or 0)
                result.compared += compared
                result.agreed += round(float(checks.get("agreement") or 0.0) * compared)
                rig.admin.abort("shadow phase over")
                rig.admin.wait_unloaded(GOOD)
    answers = run.answers
    assert answers is not None
    latency = answers.latency_ms
    result.phase_p99_ms = [(p.mode, float(np.percentile(latency[answers.between(p.start, p.end)], 99)), p.server_cpu)
                           for p in result.phases]
    for mode in ("off", "on"):
        mask = np.zeros(len(latency), dtype=bool)
        for p in result.phases:
            if p.mode == mode:
                mask |= answers.between(p.start, p.end)
        result.p50_ms[mode] = float(np.percentile(latency[mask], 50))
        result.pooled_p99_ms[mode] = float(np.percentile(latency[mask], 99))
        result.p99_ms[mode] = float(np.median([p99 for m, p99, _ in result.phase_p99_ms if m == mode]))
        result.requests[mode] = int(mask.sum())
    result.failed = int(answers.failed().sum())
    result.dropped = rig.admin.metric("inferlane_shadow_dropped_total", model=MODEL)
    result.rate = run.achieved_rate
    return result
