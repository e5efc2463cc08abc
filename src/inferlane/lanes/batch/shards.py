"""One shard's way through a batch job: read and decode → score → commit. Every engine (local.py,
ray_engine.py) runs these same steps; only where they run differs.

- :class:`ShardScorer` reads a shard, decodes its rows with the input contract (core/inputs:
  columns for Parquet and CSV, records for JSONL), runs the model over the valid rows and builds
  the output table. It holds no job state, so a Ray actor can own one.
- :class:`BatchRun` is the state of one run: the sink, counters, metrics and progress. It commits
  scored shards and writes the report.

Each step is retried by the one retry policy (core/retry.py): transient errors (connections,
timeouts, a locked database) are retried with backoff; anything else fails the shard at once
(ShardFailed), and the job goes on with the next shard. A ConfigError (bad usage) stops the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
import pyarrow as pa

from inferlane.core.errors import ConfigError, InferlaneError, InvalidInput, PayloadTooLarge, RetriesExhausted
from inferlane.core.inputs import RecordDecoder
from inferlane.core.inputs.columns import ColumnDecoder
from inferlane.core.model import ModelVersion
from inferlane.core.uri import filesystem_for
from inferlane.lanes.batch.config import BatchJob, ShardFailed
from inferlane.lanes.batch.metrics import BatchMetrics
from inferlane.lanes.batch.sources import Chunk, Shard, read_shard
from inferlane.store.kv import invalid_keys, is_kv_url
from inferlane.store.kv.shards import key_texts
from inferlane.store.tables import ShardSink, scored_table

log = logging.getLogger("inferlane.batch")
T = TypeVar("T")


@dataclass
class LoadedShard:
    """A shard read and decoded: model inputs of its valid rows per chunk, and its rejects."""

    shard: Shard
    chunks: list[tuple[Chunk, Any]]
    """(chunk, its Decoded rows)."""
    rejects: list[dict[str, Any]]
    rows_read: int


@dataclass
class ShardResult:
    shard: Shard
    table: pa.Table
    rejects: list[dict[str, Any]]
    rows_read: int


def attempt(job: BatchJob, shard: Shard, step: str, fn: Callable[[], T], on_retry: Callable[[], None]) -> T:
    """Run one step of a shard under the retry policy; ShardFailed when it fails for good."""
    what = f"shard {shard.id} ({shard.file.path} rows {shard.start}-{shard.stop}) {step}"
    try:
        return job.retry_policy.call(fn, what=what, on_retry=lambda n, e, d: on_retry())
    except (ConfigError, ShardFailed):
        raise
    except RetriesExhausted as e:
        raise ShardFailed(e.message) from e
    except InferlaneError as e:  # the model or its outputs are wrong: retrying cannot help
        raise ShardFailed(f"{what}: {e.message}") from e
    except Exception as e:  # corrupt data, a model bug: fail this shard, keep the job going
        raise ShardFailed(f"{what}: {type(e).__name__}: {e}") from e


class ShardScorer:
    """Reads, decodes and scores shards of one job with one model (no sink, no job state)."""

    def __init__(self, job: BatchJob, model: ModelVersion | None = None,
                 on_forward: Callable[[int, float], None] | None = None) -> None:
        self.job = job
        self.model = model or ModelVersion.open(job.model, job.version, job.threads)
        try:
            self.columns = ColumnDecoder.create(self.model.config, job.key, job.columns)
            self.records = RecordDecoder.create(self.model.config, job.key, job.columns, what="line", globs=True,
                                                every_other_field=True,
                                                key_hint="name the key column(s) that identify a row")
        except BaseException:
            if model is None:  # opened here: closed here, not left to interpreter exit
                self.model.close()
            raise
        self.fs, _ = filesystem_for(job.input, job.endpoint_url)
        self.on_forward = on_forward
        self.store_keys = is_kv_url(job.output)
        """A key-value store output: a row whose key it cannot hold is a reject (store/kv codec.py)."""

    def load(self, shard: Shard) -> LoadedShard:
        """Read the shard and decode every chunk (I/O and parsing: beside the model in the local engine)."""
        data = read_shard(self.fs, shard, max(self.job.batch_size, 65_536))
        rejects: list[dict[str, Any]] = [
            {"shard": shard.id, "row": row, "key": None, "reason": reason} for row, reason in data.unparsable]
        rows_read = len(data.unparsable)
        chunks = []
        for chunk in data.chunks:
            if chunk.batch is not None:
                decoded = self.columns.decode(chunk.batch, text=chunk.text)
                rows_read += chunk.batch.num_rows
            else:
                assert chunk.lines is not None
                decoded = self.records.decode(chunk.lines)
                rows_read += len(chunk.lines)
            rejects += self._rejects(shard.id, chunk, decoded.rejects)
            chunks.append((chunk, decoded))
        return LoadedShard(shard, chunks, rejects, rows_read)

    def _rejects(self, shard_id: str, chunk: Chunk, refused: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """The rejects file's records for (position in the chunk, reason)."""
        if not refused:
            return []
        texts = self._key_texts(chunk, [pos for pos, _ in refused])
        return [{"shard": shard_id, "row": chunk.row(pos), "key": texts[pos], "reason": reason}
                for pos, reason in refused]

    def _key_texts(self, chunk: Chunk, positions: list[int]) -> dict[int, str | None]:
        """The key of each rejected row as text, for the rejects file (None when it has none)."""
        out: dict[int, str | None] = {}
        for pos in positions:
            if chunk.batch is not None:
                names = chunk.batch.schema.names
                values = [chunk.batch.column(k)[pos].as_py() if k in names else None for k in self.job.key]
            else:
                assert chunk.lines is not None
                try:
                    record = orjson.loads(chunk.lines[pos])
                except orjson.JSONDecodeError:
                    record = None
                values = [record.get(k) for k in self.job.key] if isinstance(record, dict) else [None]
            out[pos] = None if all(v is None for v in values) else "|".join("" if v is None else str(v)
                                                                            for v in values)
        return out

    def score(self, loaded: LoadedShard) -> ShardResult:
        """Run the model over the valid rows of every chunk and assemble the output table."""
        scored_at = datetime.now(UTC).replace(microsecond=0)
        tables: list[pa.Table] = []
        rejects = loaded.rejects
        model = self.model
        for chunk, decoded in loaded.chunks:
            if not decoded.rows:
                continue
            try:
                outputs = model.score(decoded.inputs, self.job.batch_size, self.on_forward)
            except (InvalidInput, PayloadTooLarge):  # a row the model refuses on its own (a text too long)
                refused = model.screen(decoded.inputs)
                if not refused:
                    raise
                rejects = rejects + self._rejects(loaded.shard.id, chunk,
                                                  [(decoded.index[j], reason) for j, reason in refused])
                decoded = decoded.refuse(refused)
                if not decoded.rows:
                    continue
                outputs = model.score(decoded.inputs, self.job.batch_size, self.on_forward)
            table = scored_table(decoded.keys, outputs, model=model.name, version=model.version, scored_at=scored_at)
            if self.store_keys:
                table, bad = self._storable(table, loaded.shard.id, chunk, decoded.index)
                rejects = rejects + bad
            tables.append(table)
        table = pa.concat_tables(tables) if tables else pa.table({})
        return ShardResult(loaded.shard, table, rejects, loaded.rows_read)

    def _storable(self, table: pa.Table, shard_id: str, chunk: Chunk,
                  index: list[int]) -> tuple[pa.Table, list[dict[str, Any]]]:
        """The rows whose key a key-value store can hold, and rejects for the others."""
        texts = key_texts(table, self.job.key)
        bad = invalid_keys(texts)
        if not bad:
            return table, []
        keep = np.ones(table.num_rows, dtype=bool)
        keep[[i for i, _ in bad]] = False
        rejects = [{"shard": shard_id, "row": chunk.row(index[i]), "key": (texts[i] or "")[:200] or None,
                    "reason": reason} for i, reason in bad]
        return table.filter(pa.array(keep)), rejects

    def load_and_score(self, shard: Shard, on_retry: Callable[[], None]) -> ShardResult:
        """Both steps for one shard, each under the retry policy (what a Ray actor does per shard)."""
        loaded = attempt(self.job, shard, "read", lambda: self.load(shard), on_retry)
        return attempt(self.job, shard, "scoring", lambda: self.score(loaded), on_retry)


@dataclass
class Progress:
    total_rows: int
    enabled: bool
    _bar: Any = None

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_rows, unit="rows", unit_scale=True, dynamic_ncols=True,
                             smoothing=0.1)

    def advance(self, rows: int) -> None:
        if self._bar is not None:
            self._bar.update(rows)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class BatchRun:
    """The state of one run of a job: what every engine reports into."""

    job: BatchJob
    sink: ShardSink
    metrics: BatchMetrics
    progress: Progress
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    shards_committed: int = 0
    retries: int = 0
    failures: list[str] = field(default_factory=list)

    def retried(self) -> None:
        self.retries += 1
        self.metrics.retries.inc()

    def fail(self, error: ShardFailed) -> None:
        """A shard failed for good: reported, and the job goes on."""
        self.failures.append(str(error))
        self.metrics.shards_failed.inc()
        log.error("%s", error)

    def commit(self, res: ShardResult) -> None:
        """Commit one scored shard under the retry policy; a permanent failure is reported."""
        try:
            attempt(self.job, res.shard, "commit", lambda: self.sink.commit(res.shard.id, res.table, res.rejects),
                    self.retried)
        except ShardFailed as e:
            self.fail(e)
            return
        self.shards_committed += 1
        self.rows_read += res.rows_read
        self.rows_written += res.table.num_rows
        self.rows_rejected += len(res.rejects)
        self.metrics.rows_read.inc(res.rows_read)
        self.metrics.rows_written.inc(res.table.num_rows)
        self.metrics.rows_rejected.inc(len(res.rejects))
        self.metrics.shards_committed.inc()
        self.progress.advance(res.shard.rows)
