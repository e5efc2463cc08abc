"""Readings of the machine and the server around a cell: pinning, the CPU of everything else, TCP
retransmits, and inferlane's own batch totals from its /metrics."""

from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Collection

from benchmarks.common import logger
from benchmarks.online.config import HOST, NOISY_CPU
from inferlane.testing import all_cpu_seconds

log = logger("online-bench")


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)]


def tcp_retransmits() -> int:
    """The machine's TCP segments retransmitted so far (RetransSegs in /proc/net/snmp); on
    loopback, a retransmit means a drop or a stall."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def others_cpu(before: dict[int, float], after: dict[int, float], ours: Collection[int]) -> float:
    """CPU seconds every process not in ``ours`` used between two ``all_cpu_seconds()`` readings."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items() if pid not in ours)


def batch_totals(port: int, model: str) -> tuple[float, float] | None:
    """Rows and forward passes so far for one model (``inferlane_batch_size`` sum and count on the
    server's /metrics); None when the server does not export them."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    totals = {"sum": 0.0, "count": 0.0}
    found = False
    for m in re.finditer(r'^inferlane_batch_size_(sum|count)\{([^}]*)\} (\S+)$', text, re.MULTILINE):
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))).get("model") == model:
            totals[m.group(1)] += float(m.group(3))
            found = True
    return (totals["sum"], totals["count"]) if found else None


def wait_quiet(seconds: float, ours: Collection[int]) -> None:
    """Wait, up to ``seconds``, until the rest of the machine is idle: processes not in ``ours``
    below NOISY_CPU of a core over one second."""
    deadline = time.monotonic() + seconds
    ours = {os.getpid(), *ours}
    waited = False
    while time.monotonic() < deadline:
        before, t0 = all_cpu_seconds(), time.perf_counter()
        time.sleep(1.0)  # the window over which the others' CPU is measured
        busy = others_cpu(before, all_cpu_seconds(), ours) / (time.perf_counter() - t0)
        if busy < NOISY_CPU:
            if waited:
                log("the machine is quiet again")
            return
        if not waited:
            log(f"other processes use {busy:.0%} of a core; waiting up to {seconds:g} s for them to finish")
            waited = True
    if waited:
        log("still busy; measuring anyway (the cell will be flagged noisy?)")
