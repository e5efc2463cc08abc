"""The batch lane: resumable scoring of whole datasets into files or databases.

config.py (the job and its outcomes) · sources.py (inputs, shard plan, reading) · shards.py (the
steps of one shard and the run state) · local.py and ray_engine.py (where the steps run) · job.py
(``run_batch``: plan, engine, report) · schedule.py (cron runs with a deadline estimate).
"""

from inferlane.lanes.batch.config import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    BatchJob,
    Interrupted,
    ShardFailed,
    default_state_dir,
)
from inferlane.lanes.batch.job import dry_run, plan, run_batch

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "BatchJob", "Interrupted", "ShardFailed",
           "default_state_dir", "dry_run", "plan", "run_batch"]
