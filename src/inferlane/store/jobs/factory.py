"""Pick a job store backend from a URL (the ``jobs`` settings give one string).

    open_job_store("sqlite:///var/jobs.db")        # relative to the working directory
    open_job_store("sqlite:////srv/jobs.db")       # absolute
    open_job_store("/srv/jobs.db")                 # a bare path is SQLite too
    open_job_store("redis://jobs-redis:6379/0")    # many workers on many hosts
"""

from __future__ import annotations

from inferlane.core.errors import ConfigError
from inferlane.core.urls import sqlite_url
from inferlane.store.jobs.base import JobStore

ACCEPTED = ("sqlite:///relative/path.db, sqlite:////absolute/path.db, a bare file path, "
            "or redis://host:port/db (rediss:// for TLS)")


def open_job_store(url: str) -> JobStore:
    """The store named by ``url``; ConfigError for anything else, listing the accepted forms."""
    if url.startswith(("redis://", "rediss://")):
        from inferlane.store.jobs.redis import RedisJobStore

        return RedisJobStore(url)
    if url.startswith("sqlite:"):
        try:
            path = str(sqlite_url(url, "jobs store").path)
        except ConfigError as e:
            raise ConfigError(f"{e.message}; use {ACCEPTED}") from None
    elif "://" not in url and url.strip():
        path = url
        if path.endswith("/"):
            raise ConfigError(f"job store URL {url!r} names no file; use {ACCEPTED}")
    else:
        raise ConfigError(f"job store URL {url!r} is not supported; use {ACCEPTED}")
    from inferlane.store.jobs.sqlite import SqliteJobStore

    return SqliteJobStore(path)
