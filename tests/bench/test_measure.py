"""``inferlane bench`` measures what a server does: a known delay, a stall, 503s (tests/bench/app.py)."""

from __future__ import annotations

import pytest

from inferlane.bench import Plan, measure, render, resolve
from tests.bench.app import DELAY_S, FLAKY_EVERY, STALL_S


def test_open_loop_reports_a_fixed_delay_within_ten_percent(app_url: str) -> None:
    report = measure(resolve(app_url, model="fixed"), Plan(rate=40, duration_s=1.0, warmup_s=0.2))
    assert report.statuses == {200: report.completed} and report.completed >= 20
    assert report.latency_ms["p50"] == pytest.approx(DELAY_S * 1e3, rel=0.10)
    assert not report.generator_behind, report.warnings


def test_closed_loop_reports_a_fixed_delay_and_its_throughput(app_url: str) -> None:
    report = measure(resolve(app_url, model="fixed"), Plan(concurrency=4, duration_s=1.0, warmup_s=0.1))
    assert report.latency_ms["p50"] == pytest.approx(DELAY_S * 1e3, rel=0.10)
    assert report.throughput == pytest.approx(4 / DELAY_S, rel=0.25)  # 4 in flight, each 50 ms


def test_open_loop_shows_a_stall_in_p99_where_a_closed_loop_hides_it(app_url: str) -> None:
    # The server freezes for STALL_S once, on its 100th request to the model.
    open_loop = measure(resolve(app_url, model="stall-open"), Plan(rate=200, duration_s=1.5, warmup_s=0.1))
    # Requests due during the freeze wait for it, and latency runs from when they were due.
    assert open_loop.p99_ms >= 0.8 * STALL_S * 1e3, render(open_loop)
    assert open_loop.latency_ms["p95"] >= 0.3 * STALL_S * 1e3, render(open_loop)

    closed = measure(resolve(app_url, model="stall-closed"), Plan(concurrency=1, duration_s=1.5, warmup_s=0))
    assert closed.latency_ms["max"] >= 0.9 * STALL_S * 1e3, "the stall happened in the measured window"
    # One connection waited once; every other request was quick: the closed loop's p99 hides the stall.
    assert closed.p99_ms < 0.5 * STALL_S * 1e3, render(closed)


def test_errors_are_counted_by_status(app_url: str) -> None:
    report = measure(resolve(app_url, model="flaky"), Plan(concurrency=2, duration_s=0.6, warmup_s=0))
    total = sum(report.statuses.values())
    assert set(report.statuses) == {200, 503}
    assert report.statuses[503] / total == pytest.approx(1 / FLAKY_EVERY, abs=0.05)
    assert report.error_share == pytest.approx(1 / FLAKY_EVERY, abs=0.05)
    assert "503: " in render(report)


def test_several_processes_share_the_rate(app_url: str) -> None:
    report = measure(resolve(app_url, model="fixed"), Plan(rate=100, duration_s=1.0, warmup_s=0.2, processes=2))
    assert report.processes == 2
    assert report.completed == pytest.approx(100, rel=0.3)  # Poisson: 100 expected in 1 s
    assert report.latency_ms["p50"] == pytest.approx(DELAY_S * 1e3, rel=0.10)
