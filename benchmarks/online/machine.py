"""Readings of the machine and the server around a cell: pinning, other processes' CPU, TCP
retransmits, and the server's own batch and forward-pass totals from /metrics."""

from __future__ import annotations

import os
import re
import time
import urllib.request

from benchmarks.common import logger
from benchmarks.online.config import HOST, NOISY_CPU, Options
from inferlane.testing import all_cpu_seconds

log = logger("online-bench")


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)]


def tcp_retransmits() -> int:
    """The machine's TCP segments retransmitted so far (RetransSegs in /proc/net/snmp)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("RetransSegs")])


def model_totals(port: int, model: str) -> dict[str, float]:
    """Running totals for one model from the server's /metrics: ``batch_size_sum`` and
    ``batch_size_count`` (rows and batches) and ``forward_seconds_sum`` (time in forward passes,
    as the event loop sees it: merge, run, split and the hand-off to and from the thread)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    totals = dict.fromkeys(("batch_size_sum", "batch_size_count", "forward_seconds_sum"), 0.0)
    pattern = re.compile(r'^inferlane_(batch_size_sum|batch_size_count|forward_seconds_sum)\{([^}]*)\} (\S+)$')
    for line in text.splitlines():
        m = pattern.match(line)
        if m is not None and dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))).get("model") == model:
            totals[m.group(1)] += float(m.group(3))
    return totals


def wait_quiet(opts: Options, server_pid: int | None = None) -> None:
    """With --wait-quiet, wait (up to that long) until the rest of the machine is idle: other
    processes below NOISY_CPU of a core over one second."""
    deadline = time.monotonic() + opts.wait_quiet_s
    ours = {os.getpid(), server_pid}
    waited = False
    while time.monotonic() < deadline:
        before, t0 = all_cpu_seconds(), time.perf_counter()
        time.sleep(1.0)  # the measurement window: CPU used by others over one second
        after, wall = all_cpu_seconds(), time.perf_counter() - t0
        busy = sum(v - before.get(pid, 0.0) for pid, v in after.items() if pid not in ours) / wall
        if busy < NOISY_CPU:
            if waited:
                log("the machine is quiet again")
            return
        if not waited:
            log(f"other processes use {busy:.0%} of a core; waiting up to {opts.wait_quiet_s:g} s for them to finish")
            waited = True
    if waited:
        log("still busy; measuring anyway (the cell will be flagged noisy?)")
