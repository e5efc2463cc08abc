"""The one way a store opens its SQLite file: shared by the job store and the rollout store.

    conn = open_durable(path)        # WAL, synchronous=FULL, autocommit, usable from any thread
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_durable(path: str | Path, *, busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """A connection to ``path`` (its folder created) for a durable store: WAL so that readers do not
    block the writer and several processes of one machine share the file; ``synchronous=FULL`` so a
    committed write survives a power cut; ``isolation_level=None`` (every statement its own
    transaction unless the caller opens one); ``check_same_thread=False`` because the caller
    serialises use of the connection with its own lock."""
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn
