"""The load, from the benchmark's side: the server's capacity (closed loop, wrk) and the open-loop
client process at a constant rate, whose answers come back as one ``Answers`` record.

    capacity = measure_capacity(server.url, work, seconds=3, prefix=["taskset", "-c", "0"])
    with open_loop(server.port, capacity.rps / 2, work / "promote.json", prefix) as run:
        ...                                   # the rollout under load
    run.answers.failed().sum()
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from benchmarks.common import ROOT, module_command
from benchmarks.online.wrk import WrkResult, lua_script, run_wrk, wrk_command
from benchmarks.rollout.client import BROKEN, HUNG, REQUEST_TIMEOUT_S
from benchmarks.rollout.models import MODEL, request_bodies

CAPACITY_CONCURRENCY = 32
"""wrk connections for the capacity run (the model batches up to 32 rows)."""


class LoadBroke(RuntimeError):
    """The load could not be measured: the client failed, a request hung, or the capacity run broke."""


@dataclass(frozen=True)
class Answers:
    """Every answer of one open-loop run, one array per field, in the order they were answered."""

    due: np.ndarray
    issued: np.ndarray
    done: np.ndarray
    status: np.ndarray
    version: np.ndarray
    """The ``inferlane-model-version`` header; None for a broken or hung request."""

    @classmethod
    def read(cls, path: Path) -> Answers:
        doc = orjson.loads(path.read_bytes())
        return cls(np.array(doc["due"]), np.array(doc["issued"]), np.array(doc["done"]),
                   np.array(doc["status"], dtype=int), np.array(doc["version"], dtype=object))

    @property
    def latency_ms(self) -> np.ndarray:
        """From issued to answered: a wait for a free connection counts."""
        return np.asarray((self.done - self.issued) * 1e3)

    @property
    def lag_ms(self) -> np.ndarray:
        """How late the client issued each request (timer granularity, or the client short of CPU)."""
        return np.asarray((self.issued - self.due) * 1e3)

    def failed(self) -> np.ndarray:
        """Non-2xx answers, broken connections and hung requests."""
        ok = (self.status >= 200) & (self.status < 300)
        return np.asarray(~ok)

    def between(self, start: float, end: float) -> np.ndarray:
        """Requests due in [start, end) (time.monotonic())."""
        return np.asarray((self.due >= start) & (self.due < end))

    def hung(self) -> int:
        return int((self.status == HUNG).sum())

    def broken(self) -> int:
        return int((self.status == BROKEN).sum())


@dataclass
class LoadRun:
    """One open-loop run: its offered rate; once it ended, every answer and how long it was scheduled."""

    rate: float
    answers: Answers | None = None
    scheduled_s: float = 0.0

    @property
    def achieved_rate(self) -> float:
        return len(self.answers.status) / self.scheduled_s if self.answers is not None and self.scheduled_s else 0.0


def measure_capacity(url: str, work: Path, seconds: int, prefix: list[str]) -> WrkResult:
    """Closed loop: CAPACITY_CONCURRENCY connections, each sending its next request when the last is answered,
    on the default route (version 1). Raises LoadBroke when any request failed."""
    script = work / "capacity.lua"
    script.write_text(lua_script(request_bodies(64)))
    result = run_wrk(wrk_command(f"{url}/v2/models/{MODEL}/infer", CAPACITY_CONCURRENCY, seconds, script, prefix),
                     timeout_s=seconds + 60)
    if result.non_2xx or result.socket_errors:
        raise LoadBroke(f"the capacity run had {result.non_2xx} non-2xx answers and {result.socket_errors} "
                        "socket errors")
    if not result.rps > 0:  # wrk starved of CPU, say: every scenario would run at no load at all
        raise LoadBroke(f"the capacity run measured {result.rps} requests/s")
    return result


@contextlib.contextmanager
def open_loop(port: int, rate: float, out: Path, prefix: list[str], *,
              requests: tuple[str, Path] | None = None) -> Iterator[LoadRun]:
    """The client process sending ``rate`` requests/s from when it is ready until the block ends; then
    ``run.answers`` holds every answer. Raises LoadBroke when the client failed or a request hung (after
    ``run.answers`` is set). ``requests``: (the path to POST to, a file of one JSON body per line) instead
    of the rollout model's requests."""
    cmd = module_command("benchmarks.rollout.client", str(port), f"{rate:.3f}", str(out),
                         *([requests[0], str(requests[1])] if requests else []), prefix=prefix)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    run = LoadRun(rate)
    try:
        if proc.stdout.readline().strip() != b"ready":
            raise LoadBroke(f"the load client did not start (exit code {proc.wait(30)})")
        yield run
        try:
            proc.stdin.write(b"stop\n")
            proc.stdin.close()
        except BrokenPipeError:
            raise LoadBroke(f"the load client died (exit code {proc.wait(30)})") from None
        summary = orjson.loads(proc.stdout.readline() or b"{}")
        if proc.wait(REQUEST_TIMEOUT_S + 60) != 0 or not summary:
            raise LoadBroke(f"the load client failed (exit code {proc.returncode})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run.answers = Answers.read(out)
    run.scheduled_s = float(summary["scheduled_s"])
    if summary["undrained"] or run.answers.hung():
        raise LoadBroke(f"{summary['undrained'] + run.answers.hung()} requests hung (no answer within "
                        f"{REQUEST_TIMEOUT_S:g} s)")
