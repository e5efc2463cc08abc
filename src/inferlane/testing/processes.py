"""Child processes: stop them, notice when they die, read their logs and their CPU time.

    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
    wait_until(ready, "the server answers", abort_if=[exited(proc, log_path)])
    code = stop_process(proc)          # SIGTERM, then SIGKILL after the timeout; the exit code
    busy = tree_cpu_seconds(server.pid)  # the server and its worker processes, from /proc
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferlane.testing.waiting import AbortIf

TAIL_CHARS = 4000


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 30.0) -> int:
    """Terminate ``proc`` (SIGTERM) and wait for it; kill it when it has not exited within
    ``timeout_s``. Returns its exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def log_tail(log: Path, chars: int = TAIL_CHARS) -> str:
    """The last ``chars`` characters of a log file, or ``(no log)``."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def exited(proc: subprocess.Popen[Any], log: Path | Callable[[], str] | None = None) -> AbortIf:
    """An ``abort_if`` condition for wait_until: the reason (exit code and the end of ``log``, a
    file or a function returning the text) once ``proc`` has exited, None while it runs."""

    def reason() -> str | None:
        code = proc.poll()
        if code is None:
            return None
        text = "" if log is None else log_tail(log) if isinstance(log, Path) else log()[-TAIL_CHARS:]
        return f"the process exited with code {code}" + (f"; its log ends with:\n{text}" if text else "")

    return reason


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc (Linux); NaN once
    the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
        fields = stat[stat.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def all_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every process on the machine, by pid (processes that vanish are left out)."""
    out: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            seconds = cpu_seconds(int(entry))
            if seconds == seconds:  # not NaN
                out[int(entry)] = seconds
    return out


def parent_pid(pid: int) -> int | None:
    """The parent of a process, from /proc (Linux); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
        return int(stat[stat.rfind(")") + 2:].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def process_tree(pid: int) -> set[int]:
    """``pid`` and every live descendant of it (a server's worker processes, say)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in tree:
            tree.add(p)
            todo += children.get(p, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants so far (a descendant that exited is not
    counted); NaN once ``pid`` is gone."""
    return sum(cpu_seconds(p) for p in process_tree(pid))
