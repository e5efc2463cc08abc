"""How many CPUs this process may really use, and how a model's threads share them with serving.

A process limited to fewer CPUs than the host has (``taskset``, a container's CPU quota, a
Kubernetes limit) must not run more busy threads than it has CPUs: ONNX Runtime's default (one
thread per core of the host, spinning while idle) then fights the event loop for the same core.

    budget = cpu_budget()            # CpuBudget(cpus=1, affinity=2, quota=1.0)
    plan = thread_plan("serving")    # ThreadPlan(threads=1, spinning=False, reason="...")

- ``serving`` (the online server, its job workers): one CPU stays with the event loop, which
  parses and encodes every request; the model gets the rest (at least one thread). Idle model
  threads do not spin: between requests they would burn a core that serving needs.
- ``batch`` (batch and stream lanes): nobody else needs the CPUs between forward passes except
  short reading and writing stages, so the model gets every CPU, without spinning.

An explicit setting in model.yaml (``onnx.intra_op_num_threads``, ``onnx.allow_spinning``) always
wins; the plan fills in what it leaves open. The same plan sets BLAS/OpenMP threads (scikit-learn)
through threadpoolctl.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["serving", "batch"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CpuBudget:
    cpus: int
    """CPUs this process may use: the smaller of its affinity and its cgroup quota (rounded up)."""
    affinity: int
    """CPUs in the process's affinity mask (``os.sched_getaffinity``)."""
    quota: float | None
    """The cgroup CPU quota in CPUs (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None when unlimited."""

    def describe(self) -> str:
        quota = "no cgroup quota" if self.quota is None else f"cgroup quota {self.quota:g}"
        return f"{self.cpus} usable CPU{'s' if self.cpus != 1 else ''} (affinity {self.affinity}, {quota})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in CPUs, or None when there is none."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "150000 100000"
    if v2 is not None:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    quota, period = _read(root / "cpu" / "cpu.cfs_quota_us"), _read(root / "cpu" / "cpu.cfs_period_us")
    if quota is None:
        quota, period = _read(root / "cpu.cfs_quota_us"), _read(root / "cpu.cfs_period_us")
    try:
        q, p = int(quota or "-1"), int(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cpu_budget(root: Path = CGROUP_ROOT) -> CpuBudget:
    """The CPUs this process may really use (never less than one)."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_quota(root)
    cpus = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    return CpuBudget(max(1, cpus), affinity, quota)


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    threads: int
    """Threads for the model's own parallelism (ONNX Runtime intra-op, BLAS, OpenMP)."""
    spinning: bool
    """Whether idle model threads may spin waiting for the next operation."""
    reason: str
    """One line saying what was chosen and why (logged when a model loads)."""
    cpus: int = 1
    """The CPUs the process may use (the budget the plan was made from)."""


def thread_plan(role: Role, *, threads: int = 0, spinning: bool | None = None,
                budget: CpuBudget | None = None) -> ThreadPlan:
    """The plan for a model in ``role``; ``threads`` > 0 or ``spinning`` not None are explicit
    settings, kept as they are."""
    budget = budget or cpu_budget()
    if role == "serving":
        auto = max(1, budget.cpus - 1)
        why = f"{budget.describe()}; one kept for the event loop" if budget.cpus > 1 else budget.describe()
    else:
        auto = budget.cpus
        why = budget.describe()
    chosen = threads if threads > 0 else auto
    if threads > 0:
        why = f"{threads} set in model.yaml; {budget.describe()}"
    spin = spinning if spinning is not None else False
    spin_why = ("as set in model.yaml" if spinning is not None
                else "idle threads would take CPU from serving" if role == "serving"
                else "idle threads would take CPU from reading and writing")
    return ThreadPlan(chosen, spin, f"{chosen} model thread{'s' if chosen != 1 else ''} ({why}), "
                                    f"spinning {'on' if spin else 'off'} ({spin_why})", budget.cpus)
