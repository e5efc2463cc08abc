"""The batch lane: resumable scoring of whole datasets into files or databases."""

from inferlane.lanes.batch.job import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, BatchJob, ShardFailed, run_batch

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "BatchJob", "ShardFailed", "run_batch"]
