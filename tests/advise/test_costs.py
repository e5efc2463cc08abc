"""The cost arithmetic against hand-computed cases, starting with the seeds' own figures.

Seed 000_659741d47ff67d9d ("Dynamic Batching"): one request per forward pass gives 200 predictions/s,
64 per pass give 6,400/s. Issue 16 prices that GPU at $3/hour and batch at a 70 % spot discount.
By hand: $3/h / (200/s x 3600 s/h) = $4.1666... per million; / (6,400 x 3600) = $0.13020833... per
million; on spot (30 % of $3 = $0.90/h) = $0.0390625 per million.
"""

from __future__ import annotations

import pytest

from inferlane.advise import Pattern, Workload, advise, cost_per_million, pattern_costs
from tests.advise.synthetic import GPU_BATCHED, GPU_UNBATCHED, synthetic_profile

EXACT = 1e-12


def test_the_seeds_gpu_figures() -> None:
    assert cost_per_million(3.0, 200) == pytest.approx(25 / 6, rel=EXACT)  # 4.1666...
    assert cost_per_million(3.0, 6_400) == pytest.approx(0.130208333333, rel=1e-11)  # 3e6 / 23.04e6
    assert cost_per_million(3.0 * (1 - 0.7), 6_400) == pytest.approx(0.0390625, rel=EXACT)
    assert cost_per_million(3.0, 200) / cost_per_million(3.0, 6_400) == pytest.approx(32, rel=EXACT)  # the 32x


# A day of the GPU kept exactly busy: 6,400 requests every second.
SATURATED = Workload(requests_per_day=6_400 * 86_400, peak_rps=6_400, p99_ms=100, freshness_s=0,
                     inputs_at_request_time="yes", price_per_hour=3.0, spot_discount=0.7)


def test_online_with_and_without_batching_on_the_seeds_gpu() -> None:
    batched = pattern_costs(SATURATED, GPU_BATCHED)[Pattern.ONLINE]
    assert batched.replicas == 1  # 6,400 / 6,400 rows/s at batch 64 (5 + 2 x 10 ms = 25 ms <= 100)
    assert batched.cost_per_day == pytest.approx(72.0, rel=EXACT)  # 24 h x $3
    assert batched.cost_per_million == pytest.approx(3e6 / 23.04e6, rel=EXACT)
    unbatched = pattern_costs(SATURATED, GPU_UNBATCHED)[Pattern.ONLINE]
    assert unbatched.replicas == 32
    assert unbatched.cost_per_day == pytest.approx(32 * 72.0, rel=EXACT)
    assert unbatched.cost_per_million == pytest.approx(25 / 6, rel=EXACT)


def test_batch_on_spot_on_the_seeds_gpu() -> None:
    batch = pattern_costs(SATURATED, GPU_BATCHED)[Pattern.BATCH]
    assert batch.replicas == 0
    assert batch.rows_per_day == 6_400 * 86_400  # inputs at event time: each one scored once, later
    assert batch.machine_hours_per_day == pytest.approx(24.0, rel=EXACT)
    assert batch.cost_per_day == pytest.approx(21.6, rel=EXACT)  # 24 h x $0.90
    assert batch.cost_per_million == pytest.approx(0.0390625, rel=EXACT)


def test_async_and_stream_sizing_by_hand() -> None:
    # 1,000 requests/s on average, 4,000 at the peak, on the seeds' GPU (6,400 rows/s at batch 64).
    w = Workload(requests_per_day=86_400_000, peak_rps=4_000, p99_ms=None, freshness_s=30,
                 inputs_at_request_time="yes", price_per_hour=3.0)
    costs = pattern_costs(w, GPU_BATCHED)
    assert costs[Pattern.ASYNC].replicas == 1  # the queue takes the peak: ceil(1,000 / 6,400)
    assert costs[Pattern.STREAM].replicas == 1  # ceil(4,000 / 6,400)
    assert costs[Pattern.STREAM].cost_per_million == pytest.approx(72.0 / 86.4, rel=EXACT)
    busy = Workload(requests_per_day=86_400_000 * 8, peak_rps=20_000, p99_ms=None, freshness_s=30,
                    inputs_at_request_time="yes", price_per_hour=3.0)
    costs = pattern_costs(busy, GPU_BATCHED)
    assert costs[Pattern.ASYNC].replicas == 2  # ceil(8,000 / 6,400)
    assert costs[Pattern.STREAM].replicas == 4  # ceil(20,000 / 6,400)
    assert costs[Pattern.STREAM].machine_hours_per_day == 96.0


def test_hybrid_is_the_precompute_plus_a_live_layer() -> None:
    # 1M keys rescored hourly = 24M rows a day at 6,400 rows/s = 3,750 s = 1.0416 h on spot at $0.90/h,
    # plus one always-on replica ($72/day) for 5 % of 6,400 rps = 320 rps of misses.
    w = Workload(requests_per_day=10e6, peak_rps=6_400, p99_ms=100, freshness_s=3600,
                 inputs_at_request_time="no", price_per_hour=3.0, spot_discount=0.7, keys=1e6)
    costs = pattern_costs(w, GPU_BATCHED)
    assert costs[Pattern.BATCH].rows_per_day == 24e6
    assert costs[Pattern.BATCH].cost_per_day == pytest.approx(3750 / 3600 * 0.9, rel=EXACT)
    hybrid = costs[Pattern.HYBRID]
    assert hybrid.replicas == 1
    assert hybrid.cost_per_day == pytest.approx(3750 / 3600 * 0.9 + 72.0, rel=EXACT)
    assert hybrid.cost_per_million == pytest.approx((0.9375 + 72.0) / 10, rel=EXACT)
    # A schedule runs at most every 5 minutes: fresher asks cost 288 runs a day, not more.
    fresh = pattern_costs(Workload(**{**w.to_dict(), "freshness_s": 60.0}), GPU_BATCHED)
    assert fresh[Pattern.BATCH].rows_per_day == 288e6


def test_advice_reports_the_multiple_real_time_would_cost() -> None:
    w = Workload(requests_per_day=2e6, peak_rps=50, p99_ms=None, freshness_s=86_400, inputs_at_request_time="no",
                 price_per_hour=3.0, spot_discount=0.7)
    advice = advise(w, synthetic_profile({1: 5.0, 64: 10.0}))
    assert advice.pattern == Pattern.BATCH
    # batch: 2e6 / 6,400 = 312.5 s = 0.0868 h x $0.90 = $0.078125; online: 1 x 24 h x $3 = $72
    assert advice.cost_of(Pattern.BATCH).cost_per_day == pytest.approx(312.5 / 3600 * 0.9, rel=EXACT)
    assert any("real-time would cost 922x as much" in r for r in advice.reasons), advice.reasons
