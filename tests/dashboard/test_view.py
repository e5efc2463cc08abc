"""The dashboard's numbers from hand-made readings (pure logic: no server), the public rollout
fields, the JSON log formatter and the request-line path parser."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from inferlane.core.logs import JsonFormatter
from inferlane.store.rollout import RolloutSpec, RolloutState, RolloutStatus
from inferlane.transport.dashboard import DashboardView, Reading, quantile, read_series, rollout_rows
from inferlane.transport.http.requestlog import route_of

INF = float("inf")


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.01, 50.0), (0.1, 100.0), (INF, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.055)  # halfway through (0.01, 0.1]
    assert quantile(0.25, buckets) == pytest.approx(0.005)  # the first bucket starts at 0


def test_quantile_in_the_inf_bucket_is_the_largest_finite_bound_and_none_without_data() -> None:
    assert quantile(0.99, [(0.1, 10.0), (INF, 20.0)]) == pytest.approx(0.1)
    assert quantile(0.5, [(0.1, 0.0), (INF, 0.0)]) is None
    assert quantile(0.5, []) is None


class Clock:
    def __init__(self) -> None:
        self.at = 100.0


def _server_like(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    requests = Counter("inferlane_requests_total", "", ("model", "version", "lane", "status"), registry=registry)
    latency = Histogram("inferlane_request_duration_seconds", "", ("model", "version", "lane"),
                        buckets=(0.001, 0.01, 0.1), registry=registry)
    return requests, latency


def test_rates_percentiles_and_errors_are_deltas_between_readings() -> None:
    registry, clock = CollectorRegistry(), Clock()
    requests, latency = _server_like(registry)
    view = DashboardView(lambda: read_series(registry, clock.at), window_s=5.0)
    first = view.data()
    assert first["window_s"] is None and first["versions"] == []  # nothing yet, and no window to rate over

    for _ in range(1000):  # old traffic, slow: must not show in the window's percentiles
        requests.labels("m", "1", "online", "200").inc()
        latency.labels("m", "1", "online").observe(0.05)
    clock.at += 1.0
    view.data()
    for _ in range(90):
        requests.labels("m", "1", "online", "200").inc()
        latency.labels("m", "1", "online").observe(0.0005)
    for _ in range(10):
        requests.labels("m", "1", "online", "504").inc()
    clock.at += 1.0
    doc = view.data()
    (row,) = doc["versions"]
    assert doc["window_s"] == pytest.approx(2.0)  # from the oldest kept reading
    assert row["requests"] == {"200": 1090, "504": 10}
    assert row["rps"] == pytest.approx(1100 / 2.0)
    assert row["errors_per_s"] == {"504": pytest.approx(5.0)}
    assert row["error_rate"] == pytest.approx(10 / 1100, abs=1e-4)
    # 1000 slow requests in the window: p50 is in (0.01, 0.1]; the 90 fast ones sit under 1 ms
    assert 10.0 < row["latency_ms"]["p50"] <= 100.0

    clock.at += 10.0  # the window slides: only the latest 10 s are compared
    for _ in range(20):
        requests.labels("m", "1", "online", "200").inc()
        latency.labels("m", "1", "online").observe(0.0005)
    doc = view.data()
    (row,) = doc["versions"]
    assert row["errors_per_s"] == {}
    assert row["latency_ms"]["p99"] <= 1.0
    assert row["rps"] == pytest.approx(20 / 10.0)


def test_a_counter_that_went_down_counts_from_zero() -> None:
    before = Reading(0.0, {"inferlane_requests_total": {(("lane", "online"), ("model", "m"), ("status", "200"),
                                                         ("version", "1")): 500.0}})
    after = Reading(1.0, {"inferlane_requests_total": {(("lane", "online"), ("model", "m"), ("status", "200"),
                                                        ("version", "1")): 7.0}})
    readings = iter([before, after])
    view = DashboardView(lambda: next(readings))
    view.data()
    (row,) = view.data()["versions"]
    assert row["rps"] == pytest.approx(7.0)


def test_jobs_rows_come_from_the_jobs_lane_gauges_and_not_from_versions() -> None:
    labels = (("lane", "jobs"), ("model", "m"), ("version", "*"))
    reading = Reading(0.0, {"inferlane_jobs_backlog": {labels: 4.0},
                            "inferlane_jobs_oldest_queued_age_seconds": {labels: 12.5}})
    doc = DashboardView(lambda: reading).data()
    assert doc["versions"] == []
    assert doc["jobs"] == [{"model": "m", "backlog": 4.0, "running": 0.0, "oldest_age_s": 12.5}]


def test_rollout_rows_hold_only_the_public_facts() -> None:
    spec = RolloutSpec("fraud", "3", steps=(5, 50, 100))
    status = RolloutStatus("fraud", "2", "3", RolloutState.RUNNING, 1, 0.5, 0.0, spec,
                           last_checks={"p99_ratio": 1.1}, updated_at=1234.0)
    (row,) = rollout_rows([status])
    assert row == {"model": "fraud", "stable": "2", "canary": "3", "to_version": "3", "state": "running",
                   "step": 2, "steps": 3, "weight": 0.5, "updated_at": 1234.0}


def test_json_formatter_writes_one_line_with_extra_fields_and_the_traceback() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("inferlane.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    record.model = "fraud"
    record.path = object()  # not JSON: written as its str
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "error" and doc["logger"] == "inferlane.x" and doc["msg"] == "failed here"
    assert doc["model"] == "fraud" and doc["path"].startswith("<object")
    assert "ValueError: bad" in doc["exc"]
    assert doc["ts"].endswith("Z")


@pytest.mark.parametrize(("path", "expected"), [
    ("/v2/models/fraud/infer", ("fraud", None, "online")),
    ("/v2/models/fraud/versions/3/infer", ("fraud", "3", "online")),
    ("/v1/models/fraud:predict", ("fraud", None, "online")),
    ("/v2/models/fraud/versions/2/jobs", ("fraud", "2", "jobs")),
    ("/v2/jobs/abc", (None, None, "jobs")),
    ("/dashboard/data", (None, None, None)),
    ("/v2/models/fraud/infer/extra", (None, None, None)),
])
def test_route_of_names_model_version_and_lane(path: str, expected: tuple[str | None, ...]) -> None:
    assert route_of(path) == expected
