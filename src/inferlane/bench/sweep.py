"""The highest rate whose p99 meets a budget: short open-loop runs, doubling the rate while each
step passes, then bisecting between the last rate that passed and the first that failed.

    best, steps = sweep(resolved, budget_ms=50, start_rate=100, plan=Plan(rate=100, duration_s=5, warmup_s=1))

A step passes when its p99 is within the budget, at most 1% of requests failed (5xx or no answer)
and the generator kept up. A step where the generator fell behind is run once more (another
process can pause it once); when it falls behind again, the sweep stops and says so: the rate it
found is then the generator's limit, not the server's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from inferlane.bench.report import Report
from inferlane.bench.run import Plan, measure
from inferlane.bench.target import Resolved

MAX_ERROR_SHARE = 0.01
BISECT_STEPS = 4
"""After the first failure: at most this many bisection steps (the gap ends within ~1/16 of the rate)."""
MAX_DOUBLINGS = 16
MIN_RATE = 1.0


@dataclass(frozen=True)
class Step:
    rate: float
    report: Report
    passed: bool
    why: str


@dataclass(frozen=True)
class SweepResult:
    best_rate: float | None
    """The highest rate that passed; None when even the lowest tried failed."""
    steps: list[Step]
    limited_by_generator: bool


def judge(report: Report, budget_ms: float) -> tuple[bool, str]:
    if report.generator_behind:
        return False, "the generator fell behind (" + report.warnings[0] + ")"
    if report.error_share > MAX_ERROR_SHARE:
        return False, f"{report.error_share:.1%} of requests failed"
    if not report.p99_ms <= budget_ms:
        return False, f"p99 {report.p99_ms:.2f} ms > {budget_ms:g} ms"
    return True, f"p99 {report.p99_ms:.2f} ms <= {budget_ms:g} ms"


def sweep(resolved: Resolved, budget_ms: float, plan: Plan, start_rate: float,
          on_step: Callable[[Step], None] = lambda s: None) -> SweepResult:
    steps: list[Step] = []

    def step(rate: float) -> Step:
        step_plan = dataclasses.replace(plan, rate=rate, concurrency=None)
        report = measure(resolved, step_plan)
        if report.generator_behind:  # a busy machine can pause the generator once: measure again
            report = measure(resolved, step_plan)
        passed, why = judge(report, budget_ms)
        s = Step(rate, report, passed, why)
        steps.append(s)
        on_step(s)
        return s

    good: float | None = None
    bad: float | None = None
    rate = start_rate
    for _ in range(MAX_DOUBLINGS):  # find a bracket: double up while passing, halve down while failing
        s = step(rate)
        if s.passed:
            good = rate
            if bad is not None:
                break
            rate *= 2
        else:
            bad = rate
            if s.report.generator_behind or good is not None or rate / 2 < MIN_RATE:
                break
            rate /= 2
    if good is not None and bad is not None and not steps[-1].report.generator_behind:
        for _ in range(BISECT_STEPS):
            mid = (good + bad) / 2
            s = step(mid)
            if s.report.generator_behind:
                break
            if s.passed:
                good = mid
            else:
                bad = mid
    return SweepResult(good, steps, any(s.report.generator_behind for s in steps))
