"""Prometheus series of a batch job, declared through the one helper (core/metrics.py), so every
series carries model, version and lane="batch":

- ``inferlane_batch_rows_total{outcome="read|written|rejected"}``
- ``inferlane_batch_shards_total{outcome="committed|failed|skipped"}`` and
  ``inferlane_batch_shards_planned``, ``inferlane_batch_rows_planned`` (progress = committed / planned)
- ``inferlane_batch_retries_total``
- the shared ``inferlane_forward_seconds`` and ``inferlane_batch_size`` per forward pass
"""

from __future__ import annotations

from inferlane.core.metrics import Metrics


class BatchMetrics:
    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        labels = (model, version, "batch")
        rows = metrics.counter("inferlane_batch_rows_total", "Batch rows by outcome", ("outcome",))
        shards = metrics.counter("inferlane_batch_shards_total", "Batch shards by outcome", ("outcome",))
        self.rows_read, self.rows_written, self.rows_rejected = (rows.labels(*labels, o)
                                                                 for o in ("read", "written", "rejected"))
        self.shards_committed, self.shards_failed, self.shards_skipped = (
            shards.labels(*labels, o) for o in ("committed", "failed", "skipped"))
        self.shards_planned = metrics.gauge("inferlane_batch_shards_planned",
                                            "Shards in the job's plan").labels(*labels)
        self.rows_planned = metrics.gauge("inferlane_batch_rows_planned", "Rows in the job's plan").labels(*labels)
        self.retries = metrics.counter("inferlane_batch_retries_total", "Shard steps retried").labels(*labels)
        self.forward = metrics.forward.labels(*labels)
        self.batch_size = metrics.batch_size.labels(*labels)

    def on_forward(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.forward.observe(seconds)
