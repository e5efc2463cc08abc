"""The embedded job store: one SQLite file, safe for several threads and several processes on one machine.

    store = SqliteJobStore("var/jobs.db")

WAL mode with ``synchronous=FULL``: a submit is on disk before it returns (before the 202).
Every write runs in ``BEGIN IMMEDIATE``, which takes SQLite's write lock up front, so a
read-then-write (idempotency check, claim) cannot interleave with another process's; waiting for
the lock is bounded by ``busy_timeout_s``. Within a process one connection is shared under a lock.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from inferlane.core.errors import Unavailable
from inferlane.store.jobs.base import (
    DEFAULT_TTL_S,
    RECORD_FIELDS,
    SUMMARY_FIELDS,
    CallbackStatus,
    JobRecord,
    JobStats,
    JobStatus,
    ModelBacklog,
    lost_lease_error,
)
from inferlane.store.sqlite import open_durable

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        version TEXT,
        status TEXT NOT NULL,
        request BLOB NOT NULL,
        input_uri TEXT,
        idempotency_key TEXT,
        tenant TEXT NOT NULL DEFAULT '',
        request_header_length INTEGER,
        callback_url TEXT,
        callback_status TEXT,
        callback_attempts INTEGER NOT NULL DEFAULT 0,
        callback_error TEXT,
        callback_at REAL,
        attempts INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        error TEXT,
        result BLOB,
        output_uri TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        available_at REAL NOT NULL,
        lease_until REAL,
        worker TEXT,
        expires_at REAL,
        trace_parent TEXT
    )""",
    # claim: queued jobs by available_at (also stats' oldest), running jobs by lease_until (expired leases)
    "CREATE INDEX IF NOT EXISTS jobs_status_available ON jobs (status, available_at)",
    "CREATE INDEX IF NOT EXISTS jobs_status_lease ON jobs (status, lease_until)",
    # list: newest first, by status, by model, or all
    "CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_model_created ON jobs (model, created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at)",
    "CREATE INDEX IF NOT EXISTS jobs_tenant_created ON jobs (tenant, created_at)",
    # callbacks to deliver, by when they are due
    "CREATE INDEX IF NOT EXISTS jobs_callbacks ON jobs (callback_at) WHERE callback_status = 'pending'",
    # expire: only finished jobs carry a deadline worth scanning
    "CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at) WHERE status IN ('succeeded', 'failed')",
    # one job per idempotency key, model and tenant (NULL keys never collide); replaces the
    # per-model index of files written before tenants existed
    "DROP INDEX IF EXISTS jobs_idempotency",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_tenant ON jobs (tenant, model, idempotency_key)",
)

_ADDED_COLUMNS = {
    "tenant": "TEXT NOT NULL DEFAULT ''",
    "request_header_length": "INTEGER",
    "callback_status": "TEXT",
    "callback_attempts": "INTEGER NOT NULL DEFAULT 0",
    "callback_error": "TEXT",
    "callback_at": "REAL",
    "trace_parent": "TEXT",
}
"""Columns newer than the first schema: added to an older file when it is opened."""

# Finishing a job makes its callback pending, due at once, in the same statement.
_CALLBACK_PENDING = ("callback_status = CASE WHEN callback_url IS NULL THEN NULL ELSE 'pending' END,"
                     " callback_at = CASE WHEN callback_url IS NULL THEN NULL ELSE ? END")

_COLUMNS = ", ".join(RECORD_FIELDS)
_SELECT = f"SELECT {_COLUMNS} FROM jobs"
_SELECT_SUMMARY = f"SELECT {', '.join(SUMMARY_FIELDS)} FROM jobs"
_INSERT = f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' for _ in RECORD_FIELDS)})"


def _to_record(row: Sequence[Any], names: Sequence[str] = RECORD_FIELDS) -> JobRecord:
    values = dict(zip(names, row, strict=True))
    values["status"] = JobStatus(values["status"])
    if values["callback_status"] is not None:
        values["callback_status"] = CallbackStatus(values["callback_status"])
    if "request" in values:
        values["request"] = bytes(values["request"])
    if values.get("result") is not None:
        values["result"] = bytes(values["result"])
    return JobRecord(**values)


def _to_row(record: JobRecord) -> tuple[Any, ...]:
    values = (getattr(record, name) for name in RECORD_FIELDS)
    return tuple(v.value if isinstance(v, StrEnum) else v for v in values)


def _unavailable(path: str, e: sqlite3.Error) -> Unavailable:
    """A store that cannot write now (disk full, read-only, I/O error, locked): the caller answers
    503 and a worker backs off; the transaction was rolled back, so nothing is half-written."""
    return Unavailable(f"the SQLite job store {path} cannot be used now: {e}")


def _model_filter(models: set[str] | None) -> tuple[str, list[str]]:
    if models is None:
        return "", []
    ordered = sorted(models)
    return f" AND model IN ({', '.join('?' for _ in ordered)})", ordered


class SqliteJobStore:
    """A :class:`~inferlane.store.jobs.base.JobStore` in one SQLite file (created with its folder)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = str(path)
        # NOTE: every write below opens its own BEGIN IMMEDIATE; the lock serialises use of the
        # one connection across the lane's worker threads.
        self._conn = open_durable(self.path, busy_timeout_s=busy_timeout_s)
        self._lock = threading.Lock()
        with self._write() as c:
            c.execute(_SCHEMA[0])
            have = {row[1] for row in c.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in have:
                    c.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            for statement in _SCHEMA[1:]:
                c.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first statement."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:  # busy past busy_timeout_s, read-only, disk I/O
                raise _unavailable(self.path, e) from e
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):  # e.g. "database or disk is full"
                    raise _unavailable(self.path, e) from e
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query in it sees the same snapshot."""
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                try:
                    yield self._conn
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise _unavailable(self.path, e) from e

    @staticmethod
    def _fetch(c: sqlite3.Connection, sql: str, params: Sequence[Any]) -> JobRecord | None:
        row = c.execute(sql, params).fetchone()
        return None if row is None else _to_record(row)

    def submit(self, record: JobRecord) -> tuple[JobRecord, bool]:
        if record.status is not JobStatus.QUEUED:
            raise ValueError(f"submit takes a queued job, got status {record.status.value!r}")
        with self._write() as c:
            existing = self._fetch(c, f"{_SELECT} WHERE id = ?", (record.id,))
            if existing is None and record.idempotency_key is not None:
                existing = self._fetch(c, f"{_SELECT} WHERE tenant = ? AND model = ? AND idempotency_key = ?",
                                       (record.tenant, record.model, record.idempotency_key))
            if existing is not None:
                return existing, False
            c.execute(_INSERT, _to_row(record))
        return record, True

    def get(self, job_id: str) -> JobRecord | None:
        with self._read() as c:
            return self._fetch(c, f"{_SELECT} WHERE id = ?", (job_id,))

    def list(self, status: JobStatus | None = None, limit: int = 100, model: str | None = None,
             tenant: str | None = None) -> builtins.list[JobRecord]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        if model is not None:
            where.append("model = ?")
            params.append(model)
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        sql = _SELECT_SUMMARY + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        with self._read() as c:
            rows = c.execute(sql, (*params, max(0, limit))).fetchall()
        return [_to_record(row, SUMMARY_FIELDS) for row in rows]

    def cancel(self, job_id: str, now: float | None = None) -> JobRecord | None:
        now = time.time() if now is None else now
        with self._write() as c:
            job = self._fetch(c, f"{_SELECT} WHERE id = ?", (job_id,))
            if job is None or job.status is not JobStatus.QUEUED:
                return job
            c.execute("UPDATE jobs SET status = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                      (JobStatus.CANCELLED.value, now, now, job_id))
        return replace(job, status=JobStatus.CANCELLED, finished_at=now, updated_at=now)

    def _next_claimable(self, c: sqlite3.Connection, now: float, models: set[str] | None) -> JobRecord | None:
        """The job claimable longest: min over queued (by available_at) and lease-expired (by lease_until)."""
        in_models, model_params = _model_filter(models)
        queued = self._fetch(
            c, f"{_SELECT} WHERE status = 'queued' AND available_at <= ?{in_models}"
               " ORDER BY available_at, created_at LIMIT 1", (now, *model_params))
        lost = self._fetch(
            c, f"{_SELECT} WHERE status = 'running' AND lease_until < ?{in_models}"
               " ORDER BY lease_until, created_at LIMIT 1", (now, *model_params))
        if queued is None or lost is None:
            return queued or lost
        assert lost.lease_until is not None  # running rows always carry a lease
        return lost if lost.lease_until < queued.available_at else queued

    def claim(self, worker: str, lease_s: float, now: float, models: set[str] | None = None, *,
              ttl_s: float = DEFAULT_TTL_S) -> JobRecord | None:
        if models is not None and not models:
            return None
        with self._write() as c:
            while (job := self._next_claimable(c, now, models)) is not None:
                if job.status is JobStatus.RUNNING and job.attempts >= job.max_attempts:
                    # A job whose worker vanished on every attempt (a poison pill that kills workers)
                    # goes to the dead letter instead of taking down the next worker too.
                    error = lost_lease_error(job.attempts, job.max_attempts, job.worker)
                    c.execute("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ?,"
                              f" expires_at = ?, lease_until = NULL, {_CALLBACK_PENDING} WHERE id = ?",
                              (error, now, now, now + ttl_s, now, job.id))
                    continue
                lease_until = now + lease_s
                c.execute("UPDATE jobs SET status = 'running', worker = ?, lease_until = ?, attempts = attempts + 1,"
                          " started_at = ?, updated_at = ? WHERE id = ?", (worker, lease_until, now, now, job.id))
                return replace(job, status=JobStatus.RUNNING, worker=worker, lease_until=lease_until,
                               attempts=job.attempts + 1, started_at=now, updated_at=now)
        return None

    def extend(self, job_id: str, worker: str, lease_s: float, now: float) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE jobs SET lease_until = ?, updated_at = ?"
                            " WHERE id = ? AND status = 'running' AND worker = ?",
                            (now + lease_s, now, job_id, worker))
            return cur.rowcount == 1

    def complete(self, job_id: str, worker: str, result: bytes | None, output_uri: str | None, now: float,
                 ttl_s: float) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE jobs SET status = 'succeeded', result = ?, output_uri = ?, finished_at = ?,"
                            f" updated_at = ?, expires_at = ?, lease_until = NULL, {_CALLBACK_PENDING}"
                            " WHERE id = ? AND status = 'running' AND worker = ?",
                            (result, output_uri, now, now, now + ttl_s, now, job_id, worker))
            return cur.rowcount == 1

    def fail(self, job_id: str, worker: str, error: str, now: float, retry_at: float | None, ttl_s: float) -> bool:
        with self._write() as c:
            row = c.execute("SELECT attempts, max_attempts FROM jobs WHERE id = ? AND status = 'running'"
                            " AND worker = ?", (job_id, worker)).fetchone()
            if row is None:
                return False
            attempts, max_attempts = row
            if retry_at is not None and attempts < max_attempts:
                c.execute("UPDATE jobs SET status = 'queued', available_at = ?, error = ?, updated_at = ?,"
                          " lease_until = NULL, worker = NULL WHERE id = ?", (retry_at, error, now, job_id))
            else:
                c.execute("UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, updated_at = ?,"
                          f" expires_at = ?, lease_until = NULL, {_CALLBACK_PENDING} WHERE id = ?",
                          (error, now, now, now + ttl_s, now, job_id))
            return True

    def claim_callbacks(self, now: float, hold_s: float, limit: int) -> builtins.list[JobRecord]:
        if limit <= 0:
            return []
        with self._write() as c:
            rows = c.execute(f"{_SELECT} WHERE callback_status = 'pending' AND callback_at <= ?"
                             " ORDER BY callback_at LIMIT ?", (now, limit)).fetchall()
            jobs = [_to_record(row) for row in rows]
            c.executemany("UPDATE jobs SET callback_at = ? WHERE id = ?", [(now + hold_s, j.id) for j in jobs])
        return [replace(j, callback_at=now + hold_s) for j in jobs]

    def record_callback(self, job_id: str, status: CallbackStatus, attempts: int, error: str | None,
                        now: float) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE jobs SET callback_status = ?, callback_attempts = callback_attempts + ?,"
                            " callback_error = ?, callback_at = ?, updated_at = ?"
                            " WHERE id = ? AND callback_status = 'pending'",
                            (status.value, attempts, error, now, now, job_id))
            return cur.rowcount == 1

    def expire(self, now: float) -> int:
        with self._write() as c:
            cur = c.execute("UPDATE jobs SET status = 'expired', result = NULL, request = X'', updated_at = ?"
                            " WHERE status IN ('succeeded', 'failed') AND expires_at < ?", (now, now))
            return cur.rowcount

    def stats(self, now: float) -> JobStats:
        with self._read() as c:
            counts = dict(c.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            per_model = c.execute(
                "SELECT model, SUM(status = 'queued'), SUM(status = 'running'), "
                "MIN(CASE WHEN status = 'queued' THEN available_at END) FROM jobs "
                "WHERE status IN ('queued', 'running') GROUP BY model").fetchall()
        by_status = {s: int(counts.get(s.value, 0)) for s in JobStatus}
        by_model = {m: ModelBacklog(int(q), int(r), 0.0 if o is None else max(0.0, now - float(o)))
                    for m, q, r, o in per_model}
        age = max((b.oldest_queued_age_s for b in by_model.values()), default=0.0)
        return JobStats(backlog=by_status[JobStatus.QUEUED], running=by_status[JobStatus.RUNNING],
                        oldest_queued_age_s=age, by_status=by_status, by_model=by_model)

    def close(self) -> None:
        """Close the connection (again is harmless)."""
        with self._lock:
            self._conn.close()
