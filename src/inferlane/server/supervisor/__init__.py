"""``inferlane serve --replicas MIN..MAX``: a local supervisor of whole server processes on one port,
scaled on queue depth (docs/scaling.md).

    Supervisor(settings, ReplicaRange.parse("2..8"), up_window_s=10, down_window_s=60).run()
"""

from inferlane.server.supervisor.policy import ReplicaRange, ScalePolicy, ScaleStep
from inferlane.server.supervisor.replicas import Supervisor

__all__ = ["ReplicaRange", "ScalePolicy", "ScaleStep", "Supervisor"]
