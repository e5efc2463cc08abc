"""py-spy: record a process while a benchmark measures it, then summarize where its time went.

    spy = start_py_spy(server_pid, out / "cell.txt", duration_s=9, prefix=["taskset", "-c", "0"])
    ...
    spy.wait()            # or spy.send_signal(SIGINT) without a duration
    print("\\n".join(summarize_py_spy(out / "cell.txt", components=COMPONENTS)))

py-spy needs permission to attach to another process (root, or ``kernel.yama.ptrace_scope`` 0).
It records with ``--nonblocking`` (the process is never paused, so a few stacks are partial) and
``--format raw`` (collapsed stacks: ``thread;frame;frame... count`` per line).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path


def py_spy_binary() -> str:
    """py-spy next to this Python (the dev extras install it in the venv), else from PATH."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"


def py_spy_command(pid: int, out: Path, *, rate: int = 250, duration_s: int | None = None,
                   prefix: Sequence[str] = ()) -> list[str]:
    cmd = [*prefix, py_spy_binary(), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
           "--nonblocking", "--threads", "--output", str(out)]
    if duration_s is not None:
        cmd += ["--duration", str(max(1, duration_s))]
    return cmd


def start_py_spy(pid: int, out: Path, *, rate: int = 250, duration_s: int | None = None,
                 prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """Record ``pid`` into ``out`` for ``duration_s`` seconds, or until SIGINT when None. ``prefix``
    runs py-spy under another command (e.g. ``taskset -c 0`` to keep it off the measured core)."""
    return subprocess.Popen(py_spy_command(pid, out, rate=rate, duration_s=duration_s, prefix=prefix),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _frame(frame: str) -> str:
    """'func (path/file.py:123)' -> 'func (path/file.py)' so one function is one entry."""
    m = re.match(r"^(.*) \((.*?):\d+\)$", frame)
    return frame if m is None else f"{m.group(1)} ({m.group(2)})"


def _component(frames: list[str], components: Sequence[tuple[str, str]]) -> str:
    if not frames:
        return "no Python frame (native code, waiting for the GIL)"
    for frame in reversed(frames):
        for needle, name in components:
            if needle in frame:
                return name
    return "other Python"


def _ours(frame: str) -> bool:
    """An inferlane function worth an inclusive-time entry (not the CLI or the server's entry points)."""
    return ("inferlane/" in frame and "cli/" not in frame and "__main__" not in frame
            and "server/app.py" not in frame)


def summarize_py_spy(raw: Path, top: int = 12, components: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Shares of samples by thread, by component (the innermost frame whose file contains one of
    ``components``' needles, checked in order), by function (self time), and for inferlane's own
    functions by inclusive time, from py-spy's raw output."""
    if not raw.is_file():
        return [f"(no py-spy output at {raw})"]
    threads: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        total += n
        threads[re.sub(r"^thread \(\w+\): ", "", thread).strip('"')] += n
        if components:
            parts[_component(frames, components)] += n
        own[_frame(frames[-1]) if frames else "(native)"] += n
        for f in {_frame(f) for f in frames if _ours(f)}:
            inclusive[f] += n
    if not total:
        return ["(py-spy recorded no samples)"]

    def block(title: str, counts: Counter[str], limit: int | None = None) -> list[str]:
        return [title] + [f"  {n / total:6.1%}  {k}" for k, n in counts.most_common(limit)]

    lines = [f"{total} samples of non-idle threads (py-spy --nonblocking)", *block("by thread:", threads)]
    if components:
        lines += block("by component (innermost frame that names one):", parts)
    return [*lines, *block(f"top {top} functions by self time (top of the stack):", own, top),
            *block(f"top {top} inferlane functions by inclusive time:", inclusive, top)]
