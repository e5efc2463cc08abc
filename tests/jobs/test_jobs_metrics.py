"""The jobs lane's backlog gauges: per model, with the labels every series has, zeroed when a
model's queue empties (pure logic over a real prometheus_client registry)."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inferlane.core.metrics import Metrics
from inferlane.lanes.jobs.metrics import JobsMetrics
from inferlane.store.jobs import JobStats, JobStatus, ModelBacklog


def gauges(metrics: Metrics) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            if s.name.startswith("inferlane_jobs_"):
                assert (s.labels["version"], s.labels["lane"]) == ("*", "jobs"), s
                out[(s.name, s.labels["model"])] = s.value
    return out


def stats(by_model: dict[str, ModelBacklog]) -> JobStats:
    return JobStats(backlog=sum(b.backlog for b in by_model.values()),
                    running=sum(b.running for b in by_model.values()),
                    oldest_queued_age_s=max((b.oldest_queued_age_s for b in by_model.values()), default=0.0),
                    by_status=dict.fromkeys(JobStatus, 0), by_model=by_model)


def test_backlog_gauges_per_model_go_to_zero_when_the_queue_empties() -> None:
    metrics = Metrics()
    jm = JobsMetrics(metrics)
    jm.publish(stats({"fraud": ModelBacklog(5, 2, 3.5), "churn": ModelBacklog(1, 0, 0.5)}))
    g = gauges(metrics)
    assert g[("inferlane_jobs_backlog", "fraud")] == 5 and g[("inferlane_jobs_running", "fraud")] == 2
    assert g[("inferlane_jobs_oldest_queued_age_seconds", "fraud")] == 3.5
    assert g[("inferlane_jobs_backlog", "churn")] == 1
    jm.publish(stats({"fraud": ModelBacklog(0, 1, 0.0)}))
    g = gauges(metrics)
    assert g[("inferlane_jobs_backlog", "churn")] == 0 and g[("inferlane_jobs_running", "churn")] == 0
    assert g[("inferlane_jobs_running", "fraud")] == 1


def test_a_second_lane_in_one_process_shares_the_series() -> None:
    metrics = Metrics()
    first, second = JobsMetrics(metrics), JobsMetrics(metrics)  # declared once, found again
    assert first.backlog is second.backlog
