"""The durable job store of the jobs lane: a queue with leases, retries, a dead letter and result TTLs.

    store = open_job_store("sqlite:///var/jobs.db")     # or "redis://host:6379/0"
"""

from inferlane.store.jobs.base import (
    DEFAULT_TTL_S,
    JobRecord,
    JobStats,
    JobStatus,
    JobStore,
    ModelBacklog,
)
from inferlane.store.jobs.factory import open_job_store
from inferlane.store.jobs.redis import INSTALL_REDIS, RedisJobStore
from inferlane.store.jobs.sqlite import SqliteJobStore

__all__ = [
    "DEFAULT_TTL_S",
    "INSTALL_REDIS",
    "JobRecord",
    "JobStats",
    "JobStatus",
    "JobStore",
    "ModelBacklog",
    "RedisJobStore",
    "SqliteJobStore",
    "open_job_store",
]
