"""What every scenario runs against: ``inferlane serve`` with the admin API on, pinned to the server
core, and the rate and core of the load.

    with start_server(repo, work, cores) as server:
        rig = Rig(server, Admin(server.url, cores.client_prefix), rate, work, cores)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.rollout.admin import TOKEN, TOKEN_ENV, Admin
from inferlane.testing import ServerProcess, serve


@dataclass(frozen=True)
class Cores:
    """The server on one core, the load client (and the benchmark's own commands) on another; no
    pinning on a machine with a single core."""

    server: int | None
    client: int | None

    @classmethod
    def pick(cls, server: int, client: int) -> Cores:
        if (os.cpu_count() or 1) < 2:
            return cls(None, None)
        return cls(server, client)

    @staticmethod
    def _prefix(core: int | None) -> list[str]:
        return ["taskset", "-c", str(core)] if core is not None else []

    @property
    def server_prefix(self) -> list[str]:
        return self._prefix(self.server)

    @property
    def client_prefix(self) -> list[str]:
        return self._prefix(self.client)

    def pin_self(self) -> None:
        """This process to the client core too: its polls and the CLI it runs stay off the server's core."""
        if self.client is not None:
            os.sched_setaffinity(0, {self.client})


@contextlib.contextmanager
def start_server(repo: Path, work: Path, cores: Cores) -> Iterator[ServerProcess]:
    """``inferlane serve repo`` with the admin API on and its stores in ``work``; raises ServiceError
    (with the end of its log) when it does not start."""
    env = {TOKEN_ENV: TOKEN, "INFERLANE_JOBS_WORKERS": "0", "INFERLANE_STATE_DIR": str(work / "state"),
           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{work / 'rollouts.db'}",
           "INFERLANE_JOBS_STORE": f"sqlite:///{work / 'jobs.db'}"}
    with serve(repo, log_path=work / "server.log", prefix=cores.server_prefix, env=env) as server:
        yield server


@dataclass(frozen=True)
class Rig:
    server: ServerProcess
    admin: Admin
    rate: float
    """The open-loop rate: half the measured capacity."""
    work: Path
    cores: Cores
