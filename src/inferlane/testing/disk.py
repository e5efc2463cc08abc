"""A small disk to fill: a tmpfs of a given size, for tests of what a lane does when the disk is full.

    with small_disk(tmp / "disk", "1m") as disk:      # mounting needs root (the test machines and CI)
        ...                                           # write until ENOSPC
        grow(disk, "16m")                             # space freed: the run resumes
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from inferlane.testing.services.launcher import ServiceError


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ServiceError(f"cannot mount a tmpfs to fill (run the tests as root): {done.stderr.strip()}")


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``mount`` syntax: ``1m``, ``4m``) at ``path``; unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def grow(path: Path, size: str) -> None:
    """Give the tmpfs at ``path`` more room, keeping what it holds (what freeing space does)."""
    _mount("-o", f"remount,size={size}", str(path))
