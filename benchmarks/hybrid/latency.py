"""One open-loop phase: the rollout benchmark's client process (benchmarks/rollout/client.py) sending one
kind of request to one model at a fixed rate; latency of the requests due in the measured window,
throughput of the answers completed in it, and, for hits, proof from the server's /metrics that every
answer came from the store."""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.rollout.load import LoadBroke, LoadRun, open_loop
from inferlane.testing import LOOPBACK, ServerProcess, cpu_seconds

REACHED = 0.95
"""A phase reached its rate when the answers completed in the window came at this share of it or more."""


@dataclass(frozen=True)
class Phase:
    store: str
    kind: str
    """hit (key only, answered from the store) or live (the same row's inputs, no key)."""
    offered: float
    """Requests per second scheduled."""
    achieved: float
    """Answers completed per second in the measured window."""
    requests: int
    """Requests due in the measured window."""
    p50_ms: float
    p99_ms: float
    failed: int
    """Non-2xx, broken or hung, over the whole phase."""
    lag_p99_ms: float
    """How late the client issued requests (above a millisecond or two: the client was short of CPU)."""
    cpu_us: float
    """Server CPU per answer in the measured window, microseconds (what a request costs, whatever the rate)."""
    not_from_store: int = 0
    """Hits: answers beyond the server's count of store hits (0: every one came from the store)."""
    broke: str = ""

    @property
    def reached(self) -> bool:
        return self.achieved >= REACHED * self.offered


def hits(port: int, model: str) -> float:
    """``inferlane_hybrid_lookups_total{result="hit"}`` of ``model`` on the server's /metrics."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for m in re.finditer(r'^inferlane_hybrid_lookups_total\{([^}]*)\} (\S+)$', text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("model") == model and labels.get("result") == "hit":
            total += float(m.group(2))
    return total


def run_phase(server: ServerProcess, model: str, store: str, kind: str, bodies: Path, rate: float, warm_s: float,
              measure_s: float, out: Path, prefix: list[str]) -> Phase:
    port = server.port
    before = hits(port, model)
    broke = ""
    run: LoadRun | None = None
    try:
        with open_loop(port, rate, out, prefix, requests=(f"/v2/models/{model}/infer", bodies)) as run:
            time.sleep(warm_s)
            start, cpu = time.monotonic(), cpu_seconds(server.proc.pid)
            time.sleep(measure_s)
            end, cpu = time.monotonic(), cpu_seconds(server.proc.pid) - cpu
    except LoadBroke as e:  # hung requests: the server fell behind the rate; the answers are still there
        if run is None or run.answers is None:
            raise
        broke = str(e)
    assert run is not None and run.answers is not None
    answers = run.answers
    due = answers.between(start, end)
    latency = answers.latency_ms[due]
    done = int(((answers.done >= start) & (answers.done < end)).sum())
    ok = int((~answers.failed()).sum())
    extra = max(0, ok - round(hits(port, model) - before)) if kind == "hit" else 0
    return Phase(store, kind, rate, done / (end - start), int(due.sum()),
                 float(np.percentile(latency, 50)) if len(latency) else float("nan"),
                 float(np.percentile(latency, 99)) if len(latency) else float("nan"),
                 int(answers.failed().sum()), float(np.percentile(answers.lag_ms[due], 99)) if len(latency) else 0.0,
                 cpu / done * 1e6 if done else float("nan"), extra, broke)
