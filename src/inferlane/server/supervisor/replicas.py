"""The local supervisor of ``inferlane serve --replicas MIN..MAX``: N full ``inferlane serve`` processes
on one port, scaled on their summed queue depth.

    Supervisor(settings, ReplicaRange(2, 8), up_window_s=10, down_window_s=60).run()   # until SIGTERM

Each replica is its own process and event loop, bound to the port with SO_REUSEPORT. It listens only
once its models have loaded and warmed up (``reuse_port`` in the server settings): the kernel spreads
connections over the listening sockets only, so a cold replica gets none. The replicas share their
series through one PROMETHEUS_MULTIPROC_DIR, so any replica's ``/metrics`` answers for all of them,
and the supervisor reads the same files for its decisions (no HTTP, no extra port). The supervisor
itself binds the port first (never listening): a port in use is one clear line, and port 0 picks
one free port for every replica.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, multiprocess

from inferlane.core.cpus import cpu_budget
from inferlane.core.errors import ConfigError
from inferlane.core.metrics import load_by_model, reap_dead_processes
from inferlane.server.app import bind, shared_metrics_dir
from inferlane.server.settings import ServerSettings
from inferlane.server.supervisor.policy import ReplicaRange, ScalePolicy

log = logging.getLogger("inferlane.supervisor")

TICK_S = 0.5
"""How often the supervisor reads the shared series and checks its replicas."""
MAX_EARLY_EXITS = 3
"""Replicas in a row that exit before ever serving: the configuration is broken, the supervisor stops."""


@dataclass(frozen=True, slots=True)
class Replica:
    proc: subprocess.Popen[bytes]
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass(frozen=True, slots=True)
class Reading:
    """What the shared series say at one tick."""

    load: float
    """Requests waiting plus batches running, over every model and replica."""
    serving: int
    """Replicas warmed up and listening (the sum of ``inferlane_replicas``)."""


class CpuMeter:
    """The CPUs a set of processes uses, smoothed over a few seconds: each reading adds the CPU time
    (``/proc/<pid>/stat``: user + system) each process spent since the last, over the wall time
    between them. None where /proc is missing (not Linux): the policy then goes by load alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, smoothing_s: float = 5.0) -> None:
        self._clock = clock
        self._smoothing_s = smoothing_s
        self._last: dict[int, float] = {}
        self._at: float | None = None
        self.busy: float | None = None
        """Smoothed CPUs used (1.0: one CPU all the time); None until two readings."""

    def read(self, pids: list[int]) -> float | None:
        now = self._clock()
        seen = {pid: t for pid in pids if (t := cpu_seconds(pid)) is not None}
        if self._at is not None and now > self._at and seen:
            used = sum(t - self._last[pid] for pid, t in seen.items() if pid in self._last)
            rate = max(0.0, used / (now - self._at))
            weight = 1.0 if self._smoothing_s <= 0 else min(1.0, (now - self._at) / self._smoothing_s)
            self.busy = rate if self.busy is None else self.busy + weight * (rate - self.busy)
        self._last, self._at = seen, now
        return self.busy


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15
    except (OSError, ValueError, IndexError):
        return None


def read_shared(path: str) -> Reading:
    reap_dead_processes(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    families = list(registry.collect())
    serving = sum(s.value for f in families if f.name == "inferlane_replicas" for s in f.samples)
    return Reading(sum(load_by_model(families).values()), int(serving))


class Supervisor:
    def __init__(self, settings: ServerSettings, replicas: ReplicaRange, up_window_s: float,
                 down_window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if settings.workers > 1:
            raise ConfigError("--replicas and --workers are exclusive: --replicas MIN..MAX runs and scales whole "
                              "server processes itself (drop --workers / INFERLANE_WORKERS)")
        self.settings = settings
        self.policy = ScalePolicy(replicas, settings.target_queue, up_window_s, down_window_s,
                                  cpus=cpu_budget().cpus)
        self.cpu = CpuMeter(clock)
        self.count = replicas.low
        """Replicas wanted now (MIN..MAX); the running ones are brought to it every tick."""
        self.replicas: list[Replica] = []
        self._retiring: list[Replica] = []
        self._clock = clock
        self._stop = threading.Event()
        self._early_exits = 0
        self._serving = 0

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (the replicas drain and exit), or until replicas keep failing
        to start (exit 1)."""
        holder = bind(self.settings.host, self.settings.port, reuse_port=True)  # never listens
        port = holder.getsockname()[1]
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._stop.set())
        try:
            with shared_metrics_dir() as path:
                log.info("supervisor: replicas %s on http://%s:%d, target load %d per replica, scale up after "
                         "%g s, down after %g s", self.policy.range, self.settings.host, port,
                         self.policy.target, self.policy.up_window_s, self.policy.down_window_s)
                return self._loop(path, port)
        finally:
            self._stop_all()
            holder.close()

    def _loop(self, path: str, port: int) -> int:
        env = {**os.environ, **self.settings.to_env(), "INFERLANE_PORT": str(port), "INFERLANE_WORKERS": "1",
               "INFERLANE_REUSE_PORT": "true"}
        while not self._stop.is_set():
            if not self._reap(path):
                return 1
            while len(self.replicas) < self.count:
                self._start(env)
            reading = read_shared(path)
            if reading.serving != self._serving:
                log.info("supervisor: %d of %d replica(s) serving", reading.serving, len(self.replicas))
                if reading.serving > self._serving:
                    self._early_exits = 0
                self._serving = reading.serving
            busy = self.cpu.read([r.pid for r in self.replicas])
            step = self.policy.observe(self._clock(), reading.load, self.count, busy)
            if step.delta:
                self.count += step.delta
                log.info("supervisor: scale %s to %d replica(s): %s", "up" if step.delta > 0 else "down",
                         self.count, step.reason)
                if step.delta < 0:
                    self._retire(self.replicas[-1])
            self._stop.wait(TICK_S)
        return 0

    def _start(self, env: dict[str, str]) -> None:
        proc = subprocess.Popen([sys.executable, "-m", "inferlane", "serve"], env=env,
                                preexec_fn=_die_with_parent)
        self.replicas.append(Replica(proc, self._clock()))
        log.info("supervisor: started replica pid %d (%d of %d)", proc.pid, len(self.replicas), self.count)

    def _retire(self, replica: Replica) -> None:
        """SIGTERM: the replica stops accepting, finishes its requests, exits 0 (reaped by a later tick)."""
        self.replicas.remove(replica)
        self._retiring.append(replica)
        replica.proc.terminate()
        log.info("supervisor: retiring replica pid %d", replica.pid)

    def _reap(self, path: str) -> bool:
        """Forget replicas that exited (the next tick starts their replacements); False once too many
        in a row died before serving."""
        for replica in list(self._retiring):
            if replica.proc.poll() is not None:
                self._retiring.remove(replica)
                multiprocess.mark_process_dead(replica.pid, path)  # type: ignore[no-untyped-call]
        for replica in list(self.replicas):
            code = replica.proc.poll()
            if code is None:
                continue
            self.replicas.remove(replica)
            multiprocess.mark_process_dead(replica.pid, path)  # type: ignore[no-untyped-call]
            log.warning("supervisor: replica pid %d exited with code %d; replacing it", replica.pid, code)
            if self._serving == 0:
                self._early_exits += 1
                if self._early_exits >= MAX_EARLY_EXITS:
                    log.error("supervisor: %d replicas in a row exited before serving; stopping (see their "
                              "log lines above)", self._early_exits)
                    return False
        return True

    def _stop_all(self) -> None:
        self.replicas += self._retiring
        self._retiring.clear()
        for replica in self.replicas:
            replica.proc.terminate()
        for replica in self.replicas:
            try:
                replica.proc.wait(self.settings.graceful_timeout_s + 5)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()
        self.replicas.clear()


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies, even by SIGKILL (Linux), so that no
    replica is left serving alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
