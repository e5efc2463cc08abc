"""Scenario 1, promote: ``rollout start`` to the good version 2 under load, through every step to
promoted, until version 1 is unloaded; every request of the run must succeed.

Figures: the outcome (promoted, or how it ended), start → promoted from the rollout history, the
failed requests (non-2xx, broken or hung) among every request of the run, and, to show what a
running rollout costs the server, the live p99 and the server's CPU in the second before the start
against the same during the rollout, and the p99 ratio the controller measured at each step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.rollout.load import open_loop
from benchmarks.rollout.models import GOOD, STABLE
from benchmarks.rollout.rig import Rig
from inferlane.testing import cpu_seconds

SETTLE_S = 1.0
"""Load alone before the rollout starts, and after the old version is unloaded."""


@dataclass(frozen=True)
class PromoteResult:
    outcome: str
    """The rollout's final state: ``promoted``, or ``rolled_back`` when a check stopped the good version."""
    seconds: float
    """From the ``started`` event to the ``promoted`` (or ``rolled_back``) event."""
    requests: int
    failed: int
    versions: dict[str, int]
    """Answers per version."""
    events: list[str]
    ending: dict[str, Any]
    """The last event's detail (for a rollback: the check, its values and limit)."""
    rate: float
    """The rate the client achieved."""
    p99_before_ms: float
    p99_during_ms: float
    cpu_before: float
    cpu_during: float
    """The server's CPU time per second (1.0: its whole core) before the start and during the rollout."""


def min_samples(rate: float, percent: float, window_s: float) -> int:
    """Half of what the first step sends the canary in a window: a window ends on time, never waits."""
    return max(30, int(0.5 * rate * percent / 100.0 * window_s))


def run_promote(rig: Rig, steps: list[float], window_s: float, max_p99_ratio: float) -> PromoteResult:
    pid = rig.server.proc.pid
    with open_loop(rig.server.port, rig.rate, rig.work / "promote.json", rig.cores.client_prefix) as run:
        t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(SETTLE_S)
        t1, cpu1 = time.monotonic(), cpu_seconds(pid)
        rig.admin.start(to=GOOD, steps=steps, window_s=window_s, min_samples=min_samples(rig.rate, steps[0], window_s),
                        max_p99_ratio=max_p99_ratio, drain_s=1.0)
        state = rig.admin.wait_state({"promoted", "rolled_back", "aborted"},
                                     timeout_s=len(steps) * (window_s + 5) + 30)["state"]
        t2, cpu2 = time.monotonic(), cpu_seconds(pid)
        if state == "promoted":
            rig.admin.wait_unloaded(STABLE)
        time.sleep(SETTLE_S)
    events = rig.admin.history()
    answers = run.answers
    assert answers is not None
    versions: dict[str, int] = {}
    for v in answers.version:
        versions[str(v)] = versions.get(str(v), 0) + 1
    latency = answers.latency_ms
    return PromoteResult(
        outcome=state, seconds=events[-1]["at"] - events[0]["at"], requests=len(answers.status),
        failed=int(answers.failed().sum()), versions=versions, events=[_describe(e) for e in events],
        ending=dict(events[-1].get("detail") or {}), rate=run.achieved_rate,
        p99_before_ms=float(np.percentile(latency[answers.between(t0, t1)], 99)),
        p99_during_ms=float(np.percentile(latency[answers.between(t1, t2)], 99)),
        cpu_before=(cpu1 - cpu0) / (t1 - t0), cpu_during=(cpu2 - cpu1) / (t2 - t1))


def _describe(event: dict[str, Any]) -> str:
    """``step 50% (p99 ratio 1.12)``: the kind, the step's percent, the p99 ratio of the window that ended."""
    detail = event.get("detail") or {}
    percent = detail.get("percent")
    text = str(event["kind"]) + (f" {percent:g}%" if isinstance(percent, float | int) else "")
    ratio = ((detail.get("checks") or {}).get("p99_ratio") or {}).get("ratio", detail.get("ratio"))
    return text + (f" (p99 ratio {ratio:.2f})" if isinstance(ratio, float | int) else "")
