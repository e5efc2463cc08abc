"""Prometheus series of the jobs lane, declared through the one helper (core/metrics.py), so every
series carries model, version and lane="jobs".

The backlog gauges are what an autoscaler scales workers on. The store queues jobs by model,
whatever version they asked for, so their ``version`` label is ``*``:

- ``inferlane_jobs_backlog``, ``inferlane_jobs_running``, ``inferlane_jobs_oldest_queued_age_seconds``
- ``inferlane_jobs_worker_healthy`` (model and version ``*``): 0 while the worker cannot use the store
- ``inferlane_job_duration_seconds`` (submit to final state), ``inferlane_job_attempts_total``,
  ``inferlane_job_outcomes_total{outcome}`` — their version is the one the job asked for, or ``default``
"""

from __future__ import annotations

from inferlane.core.metrics import Metrics
from inferlane.store.jobs import JobStats

_JOB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
ALL_VERSIONS = "*"


class JobsMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self.backlog = metrics.gauge("inferlane_jobs_backlog", "Queued jobs, including those waiting out a retry")
        self.running = metrics.gauge("inferlane_jobs_running", "Jobs held by a worker")
        self.oldest_age = metrics.gauge("inferlane_jobs_oldest_queued_age_seconds",
                                        "How long the oldest claimable queued job has waited")
        self.latency = metrics.histogram("inferlane_job_duration_seconds", "Submit to final state, per job",
                                         buckets=_JOB_BUCKETS)
        self.attempts = metrics.counter("inferlane_job_attempts_total", "Job attempts started by this process")
        self.outcomes = metrics.counter("inferlane_job_outcomes_total", "Job attempts by outcome", ("outcome",))
        self.worker_healthy = metrics.gauge(
            "inferlane_jobs_worker_healthy",
            "1 while this process's job worker can use the job store; 0 while it is failing or stopped")
        self._published: set[str] = set()

    def set_worker_healthy(self, healthy: bool) -> None:
        """The worker gauge (model and version ``*``: the worker serves every model)."""
        self.worker_healthy.labels(ALL_VERSIONS, ALL_VERSIONS, "jobs").set(1 if healthy else 0)

    def publish(self, stats: JobStats) -> None:
        """Set the backlog gauges of every model; a model whose queue emptied goes to zero."""
        for model in self._published - set(stats.by_model):
            for gauge in (self.backlog, self.running, self.oldest_age):
                gauge.labels(model, ALL_VERSIONS, "jobs").set(0)
        for model, b in stats.by_model.items():
            labels = (model, ALL_VERSIONS, "jobs")
            self.backlog.labels(*labels).set(b.backlog)
            self.running.labels(*labels).set(b.running)
            self.oldest_age.labels(*labels).set(b.oldest_queued_age_s)
        self._published = set(stats.by_model)
