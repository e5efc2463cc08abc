"""The local engine: the shard steps of shards.py on this machine, overlapped in three stages.

A reader thread reads and decodes the next shards (at most two ahead), this thread runs the model
(one caller, so the model's own threads use every usable CPU), and a writer thread commits finished
shards in order (at most two waiting).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from inferlane.lanes.batch.config import ShardFailed
from inferlane.lanes.batch.shards import BatchRun, LoadedShard, ShardResult, ShardScorer, attempt
from inferlane.lanes.batch.sources import Shard


def run_local(run: BatchRun, scorer: ShardScorer, todo: list[Shard]) -> None:
    job = run.job

    def read(shard: Shard) -> LoadedShard:
        return attempt(job, shard, "read", lambda: scorer.load(shard), run.retried)

    def score(shard: Shard, loaded: LoadedShard) -> ShardResult:
        return attempt(job, shard, "scoring", lambda: scorer.score(loaded), run.retried)

    with ThreadPoolExecutor(1, thread_name_prefix="batch-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="batch-write") as writer:
        reads: dict[int, Future[LoadedShard]] = {i: reader.submit(read, s) for i, s in enumerate(todo[:2])}
        writes: list[Future[None]] = []
        try:
            for i, shard in enumerate(todo):
                if i + 2 < len(todo):
                    reads[i + 2] = reader.submit(read, todo[i + 2])
                try:
                    result = score(shard, reads.pop(i).result())
                except ShardFailed as e:
                    run.fail(e)
                    continue
                if len(writes) >= 2:
                    writes[-2].result()
                writes.append(writer.submit(run.commit, result))
        except BaseException:
            # Stopping (Ctrl-C, bad usage): reads not started are dropped; scored shards already
            # handed to the writer are still committed (the executors wait for them).
            for f in reads.values():
                f.cancel()
            raise
        for w in writes:
            w.result()
