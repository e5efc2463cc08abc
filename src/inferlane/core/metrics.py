"""Prometheus series (DESIGN.md, "Observability"), labelled by model, version and lane.

Each server owns one :class:`Metrics` with its own CollectorRegistry, so tests and several
apps in one process never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_LABELS = ("model", "version", "lane")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("inferlane_requests_total", "Inference requests by outcome",
                                (*_LABELS, "status"), registry=r)
        self.request_latency = Histogram("inferlane_request_duration_seconds",
                                         "End-to-end request latency inside the server",
                                         _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("inferlane_queue_wait_seconds",
                                    "Time a request waited in the batcher queue",
                                    _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.forward = Histogram("inferlane_forward_seconds", "Forward pass time per batch",
                                 _LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("inferlane_batch_size", "Rows per executed batch",
                                    _LABELS, buckets=_BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("inferlane_batch_requests", "Requests per executed batch",
                                        _LABELS, buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("inferlane_queue_depth", "Requests waiting in the batcher queue",
                                 _LABELS, registry=r)
        self.inflight = Gauge("inferlane_inflight_batches", "Batches running a forward pass",
                              _LABELS, registry=r)

        # The jobs lane: what an autoscaler needs (backlog, lag) and what an operator watches.
        self.jobs_backlog = Gauge("inferlane_jobs_backlog", "Queued jobs (all models in the store)",
                                  ["lane"], registry=r)
        self.jobs_running = Gauge("inferlane_jobs_running", "Jobs held by a worker", ["lane"], registry=r)
        self.jobs_oldest_age = Gauge("inferlane_jobs_oldest_queued_age_seconds",
                                     "Age of the oldest claimable queued job", ["lane"], registry=r)
        self.job_latency = Histogram("inferlane_job_duration_seconds", "Submit to final state, per job",
                                     _LABELS, buckets=(*_LATENCY_BUCKETS, 60.0, 300.0, 900.0, 3600.0),
                                     registry=r)
        self.job_attempts = Counter("inferlane_job_attempts_total", "Job attempts started by this process",
                                    _LABELS, registry=r)
        self.job_outcomes = Counter("inferlane_job_outcomes_total", "Job attempts by outcome",
                                    (*_LABELS, "outcome"), registry=r)

    def batch_observer(self, model: str, version: str, lane: str = "online") -> BatchMetrics:
        return BatchMetrics(self, model, version, lane)


class BatchMetrics:
    """Labelled children bound once per model version (the hot path does no label lookups)."""

    def __init__(self, m: Metrics, model: str, version: str, lane: str) -> None:
        labels = (model, version, lane)
        self._batch_size = m.batch_size.labels(*labels)
        self._batch_requests = m.batch_requests.labels(*labels)
        self._forward = m.forward.labels(*labels)
        self._queue_wait = m.queue_wait.labels(*labels)
        self._depth = m.queue_depth.labels(*labels)
        self._inflight = m.inflight.labels(*labels)

    def on_batch(self, rows: int, requests: int, forward_s: float, queue_waits: list[float]) -> None:
        self._batch_size.observe(rows)
        self._batch_requests.observe(requests)
        self._forward.observe(forward_s)
        for w in queue_waits:
            self._queue_wait.observe(w)

    def on_queue(self, depth: int, inflight: int) -> None:
        self._depth.set(depth)
        self._inflight.set(inflight)
