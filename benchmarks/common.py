"""What every benchmark shares that is not test harness (that lives in ``inferlane.testing``): the
repository root, helper programs run as modules, log lines, the machine summary and JSON output.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
"""The repository root: helper programs run as ``python -m benchmarks.<lane>.<program>`` from here."""


def module_command(module: str, *args: str, prefix: list[str] | None = None) -> list[str]:
    """The command that runs ``module`` (e.g. ``benchmarks.online.bare``) with this Python; run it
    with ``cwd=ROOT``. ``prefix`` runs it under another command (e.g. ``taskset -c 0``)."""
    return [*(prefix or []), sys.executable, "-m", module, *args]


def logger(prefix: str) -> Callable[[str], None]:
    """A function printing ``[prefix HH:MM:SS] message`` to stderr (the tables go to stdout)."""

    def log(message: str) -> None:
        print(f"[{prefix} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    return log


def command_line() -> str:
    return shlex.join(sys.orig_argv)


def load_average() -> float:
    return os.getloadavg()[0]


def machine_line(load_before: float, load_after: float, elapsed_s: float) -> str:
    return (f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
            f"load average {load_before:.2f} before, {load_after:.2f} after; {elapsed_s:.0f} s in all")


def source_state() -> str:
    """inferlane's version and, in a git checkout, the commit and whether src/ has edits."""
    from inferlane import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               check=True, capture_output=True, text=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"inferlane {__version__}"
    edits = f" + uncommitted edits in {len(dirty)} file(s) under src/" if dirty else ""
    return f"inferlane {__version__}, commit {commit}{edits}"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")


def emit(doc: dict[str, Any]) -> None:
    """One JSON line on stdout: how helper programs report to the benchmark that runs them."""
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
