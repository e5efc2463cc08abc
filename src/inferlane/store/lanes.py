"""Where running stream and batch lanes leave their latest state for the server's ``/dashboard``.

A stream lane (``inferlane stream``) and a batch job (``inferlane batch``) run as their own
processes; their Prometheus series live there, not in the server. So that the server's dashboard can
show them without scraping anything, each writes a small report every couple of seconds into a
SQLite file in the state folder, and the server reads the recent ones:

    with report_lane("stream", "fraud-scorer", lambda: {"model": "fraud", "lag": {"0": 12}}):
        ...                                   # the lane runs; its report is rewritten every 2 s
    LaneReports.open(lanes_db()).recent("stream", now=time.time(), max_age_s=30)

One row per (kind, name), overwritten: the file stays small however long a lane runs. It is a
one-machine mechanism (the server and the lanes share ``$INFERLANE_STATE_DIR``); lanes on other
hosts show up in Prometheus (``inferlane_stream_consumer_lag``, ``inferlane_batch_rows_total``)
and the Grafana dashboard, not here. A failure to write a report is logged once and never stops
the lane.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from inferlane.core.state import state_dir
from inferlane.store.sqlite import open_durable

log = logging.getLogger(__name__)

LaneKind = Literal["stream", "batch"]
REPORT_INTERVAL_S = 2.0
STALE_AFTER_S = 30.0
"""A report older than this is not shown: its lane stopped without saying so (killed)."""


def lanes_db() -> Path:
    """The reports file: ``lanes.db`` in the state folder."""
    return state_dir() / "lanes.db"


@dataclass(frozen=True)
class LaneReport:
    kind: str
    name: str
    """The stream's consumer group, or the batch job's id."""
    doc: dict[str, Any]
    updated_at: float
    """Wall-clock time of the report."""


class LaneReports:
    """The reports file. Thread-safe: one connection, one lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        conn.execute("CREATE TABLE IF NOT EXISTS lane_reports (kind TEXT NOT NULL, name TEXT NOT NULL, "
                     "doc TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (kind, name))")

    @classmethod
    def open(cls, path: Path) -> LaneReports:
        return cls(open_durable(path, busy_timeout_s=2.0))

    def put(self, kind: str, name: str, doc: dict[str, Any], now: float) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO lane_reports VALUES (?, ?, ?, ?)",
                               (kind, name, json.dumps(doc, default=str), now))

    def recent(self, kind: str, now: float, max_age_s: float = STALE_AFTER_S) -> list[LaneReport]:
        """The reports of ``kind`` written in the last ``max_age_s`` seconds, by name."""
        with self._lock:
            rows = self._conn.execute("SELECT kind, name, doc, updated_at FROM lane_reports WHERE kind = ? "
                                      "AND updated_at >= ? ORDER BY name", (kind, now - max_age_s)).fetchall()
        return [LaneReport(k, n, json.loads(d), t) for k, n, d, t in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class LaneReporter:
    """Writes ``read()`` under (kind, name) every ``interval_s`` from a daemon thread, and once more
    with ``state`` set when closed."""

    def __init__(self, kind: LaneKind, name: str, read: Callable[[], dict[str, Any]], path: Path | None = None,
                 interval_s: float = REPORT_INTERVAL_S) -> None:
        self.kind, self.name, self._read, self.interval_s = kind, name, read, interval_s
        self._path = path or lanes_db()
        self._reports: LaneReports | None = None
        self._stop = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._run, name=f"{kind}-report", daemon=True)

    def start(self) -> LaneReporter:
        self._thread.start()
        return self

    def _write(self, state: str) -> None:
        try:
            if self._reports is None:
                self._reports = LaneReports.open(self._path)
            self._reports.put(self.kind, self.name, {**self._read(), "state": state}, time.time())
        except Exception as e:  # the dashboard missing a row must never stop the lane
            if not self._failed:
                self._failed = True
                log.warning("cannot write the %s report of %s to %s (the dashboard will not show it): %s",
                            self.kind, self.name, self._path, e)

    def _run(self) -> None:
        while True:
            self._write("running")
            if self._stop.wait(self.interval_s):
                return

    def close(self, state: str = "ended") -> None:
        """Stop reporting; the last report says ``state``."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._write(state)
        if self._reports is not None:
            self._reports.close()


@contextmanager
def report_lane(kind: LaneKind, name: str, read: Callable[[], dict[str, Any]],
                path: Path | None = None) -> Iterator[LaneReporter]:
    reporter = LaneReporter(kind, name, read, path).start()
    try:
        yield reporter
    finally:
        reporter.close()


def read_reports(kind: str, now: float, path: Path | None = None) -> list[dict[str, Any]]:
    """For the dashboard: the recent reports of ``kind`` as ``{"name", "updated_at", **doc}``; none
    while no lane has written the file yet (it is not created by reading)."""
    path = path or lanes_db()
    if not path.is_file():
        return []
    reports = LaneReports.open(path)
    try:
        return [{**r.doc, "name": r.name, "updated_at": r.updated_at} for r in reports.recent(kind, now)]
    finally:
        reports.close()
