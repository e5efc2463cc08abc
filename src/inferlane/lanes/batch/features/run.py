"""One materialization: read the source's blocks, check them, store their values."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from inferlane.core.errors import ConfigError
from inferlane.core.urls import redact
from inferlane.lanes.batch.features.columns import cell, column_kind, encode_block, key_texts, numbers
from inferlane.lanes.batch.features.job import MAX_FIELDS, REJECT_SAMPLES, Materialization, MaterializeReport
from inferlane.lanes.batch.features.sources import Block, source_blocks
from inferlane.store import kv


class Materializer:
    """One run: which columns are stored, the rows rejected, and the writes."""

    def __init__(self, job: Materialization, store: kv.KVStore, report: MaterializeReport) -> None:
        self.job = job
        self.store = store
        self.report = report
        self.kinds: dict[str, str | None] = {}
        """Column → "numeric", why it is skipped, or None while undecided."""
        self.computed_at = time.time()
        self.version = redact(job.source)[:1000]

    def _reject(self, where: str, row: int, reason: str) -> None:
        self.report.rows_rejected += 1
        if len(self.report.rejects) < REJECT_SAMPLES:
            self.report.rejects.append(f"{where} row {row}: {reason}")

    def _check(self, block: Block) -> list[str]:
        """The block's candidate feature columns (ConfigError for a missing key or an unknown column)."""
        names = list(block.columns)
        missing = [k for k in self.job.key if k not in block.columns]
        if missing:
            raise ConfigError(f"{block.where}: no key column {', '.join(map(repr, missing))} (columns: "
                              f"{', '.join(names[:20])}{', ...' if len(names) > 20 else ''})")
        wanted = self.job.columns
        if wanted is None:
            candidates = [n for n in names if n not in self.job.key]
            if not candidates and block.every_column:
                raise ConfigError(f"{block.where}: no column besides the key {', '.join(self.job.key)}: "
                                  "nothing to store")
            return candidates
        if set(wanted) & set(self.job.key):
            both = ", ".join(sorted(set(wanted) & set(self.job.key)))
            raise ConfigError(f"--columns: {both} is the key, not a feature")
        unknown = [c for c in wanted if c not in block.columns]
        if unknown and block.every_column:
            raise ConfigError(f"{block.where}: no column {', '.join(map(repr, unknown))} (--columns)")
        return wanted

    def _decide(self, block: Block, candidates: list[str]) -> list[str]:
        """Set the kind of each column seen with a value for the first time; the columns stored."""
        for name in candidates:
            if self.kinds.get(name) is None and name in block.columns:
                kind = self.kinds[name] = column_kind(block.columns[name], block.text)
                if kind not in (None, "numeric"):
                    if self.job.columns is not None:
                        raise ConfigError(f"{block.where}: column {name!r} is not numeric: it {kind}")
                    self.report.skipped_columns[name] = f"not numeric: it {kind}"
            self.kinds.setdefault(name, None)
        stored = [n for n, k in self.kinds.items() if k == "numeric"]
        if len(stored) > MAX_FIELDS:
            raise ConfigError(f"{len(stored)} numeric columns: a value holds at most {MAX_FIELDS}; pick them with "
                              "--columns")
        if self.kinds and all(k not in (None, "numeric") for k in self.kinds.values()):
            raise ConfigError(f"{block.where}: no numeric column to store (skipped: "
                              f"{'; '.join(f'{n} {w}' for n, w in self.report.skipped_columns.items())})")
        return stored

    def add(self, block: Block) -> None:
        """Check, encode and write one block."""
        for row, reason in block.rejects:
            self._reject(block.where, row, reason)
        n = len(block.rows)
        self.report.rows_read += n + len(block.rejects)
        if not block.columns:  # only lines that could not be parsed
            return
        candidates = self._check(block)
        stored = self._decide(block, candidates)
        if not n:
            return
        texts, why = key_texts(block, self.job.key)
        ok = np.array([w is None for w in why], dtype=bool)
        columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in stored:
            if name not in block.columns:
                continue  # a JSONL chunk without the field: null in every row
            numeric, present, bad = numbers(block.columns[name], block.text)
            for i in np.flatnonzero(bad & ok):
                why[i] = f"column {name!r}: {str(cell(block.columns[name], int(i)))[:40]!r} is not a number"
            ok &= ~bad
            columns[name] = numeric, present
        for i in np.flatnonzero(~ok):
            self._reject(block.where, block.rows[int(i)], why[i] or "")
        good = np.flatnonzero(ok)
        if not len(good):
            return
        empty = [n for n, k in self.kinds.items() if k in (None, "numeric")]
        values = encode_block(len(good), {n: (v[good], p[good]) for n, (v, p) in columns.items()}, empty,
                              self.version, self.computed_at)
        written = self.store.put_many([(texts[i], v) for i, v in zip(good, values, strict=True)], self.job.ttl_s)
        self.report.keys_written += written
        self.report.keys_older += len(good) - written

    def finish(self) -> None:
        self.report.columns = [n for n, k in self.kinds.items() if k == "numeric"]
        for n, k in self.kinds.items():
            if k is None:
                self.report.skipped_columns[n] = "every value is null"
        unknown = [c for c in self.job.columns or [] if c not in self.kinds]
        if unknown:
            raise ConfigError(f"{redact(self.job.source)}: no column {', '.join(map(repr, unknown))} (--columns)")


def materialize(job: Materialization) -> MaterializeReport:
    """Store the features of every row of ``job.source``; ConfigError for bad usage or an unreadable
    source, StoreError when the store fails."""
    if job.batch_rows < 1:
        raise ConfigError("--batch-rows must be at least 1")
    if job.ttl_s is not None and not job.ttl_s > 0:
        raise ConfigError("--ttl must be a positive duration, such as 7d")
    if not job.key or not all(job.key):
        raise ConfigError("--key names the key column(s), comma-separated")
    started = time.perf_counter()
    store = kv.open_kv(job.store, flag="--store")
    report = MaterializeReport(redact(job.source), store.description)
    try:
        total, blocks = source_blocks(job)
        bar = _progress(total) if job.progress else None
        run = Materializer(job, store, report)
        try:
            for block in blocks:
                run.add(block)
                if bar is not None:
                    bar.update(len(block.rows) + len(block.rejects))
        finally:
            blocks.close()  # a SQL source's cursor and connection, at once
            if bar is not None:
                bar.close()
        run.finish()
    finally:
        store.close()
    if not report.rows_read:
        raise ConfigError(f"{redact(job.source)} holds no rows: nothing to materialize")
    report.duration_s = time.perf_counter() - started
    return report


def _progress(total: int | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="rows", unit_scale=True, dynamic_ncols=True, smoothing=0.1)
