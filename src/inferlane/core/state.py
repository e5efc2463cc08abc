"""Where inferlane keeps local state that belongs to no output: one folder for every lane.

    state_dir()                      # $INFERLANE_STATE_DIR, else .inferlane in the current directory
    state_dir() / "jobs.db"          # the default job store
    state_dir() / "stream" / group   # a stream group's delivery counts and default dead letters
    state_dir() / "batch"            # reports and rejects of batch jobs writing to a database

Read when called (not at import), so a process that sets the variable before starting a lane,
and a test that sets it per test, both get what they set.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_DIR_ENV = "INFERLANE_STATE_DIR"


def state_dir() -> Path:
    """``$INFERLANE_STATE_DIR``, else ``.inferlane`` under the current directory."""
    return Path(os.environ.get(STATE_DIR_ENV) or ".inferlane")
