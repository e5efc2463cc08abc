"""The statistics of a rollout window and the canary checks: pure logic on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferlane.rollout.checks import Verdict, judge, wilson_lower
from inferlane.rollout.router import Outcome
from inferlane.rollout.stats import WindowStats, agrees, psi, psi_from_shares, psi_test
from inferlane.store.rollout import RolloutSpec


def test_psi_of_the_textbook_shares() -> None:
    # Four equal bins against 10/20/30/40 %, term by term:
    # (0.1-0.25)ln(0.4) + (0.2-0.25)ln(0.8) + (0.3-0.25)ln(1.2) + (0.4-0.25)ln(1.6)
    expected = 0.15 * math.log(2.5) + 0.05 * math.log(1.25) + 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    assert psi_from_shares([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.2282, abs=1e-4)
    assert psi_from_shares([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_an_empty_bin_is_floored_not_infinite() -> None:
    value = psi_from_shares([0.5, 0.5, 0.0], [0.4, 0.4, 0.2])
    assert math.isfinite(value) and value > 1.0  # 20 % landing where stable never goes dominates


def test_psi_of_identical_distributions_is_noise_only() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    assert psi(a, b) < 0.01
    t = psi_test(a, b)
    assert t.noise == pytest.approx(9 * (1 / 20_000 + 1 / 20_000))
    assert t.value < 0.005


def test_a_one_sd_shift_is_well_above_the_usual_limit() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=20_000), rng.normal(loc=1.0, size=20_000)
    assert psi(a, b) > 0.2
    assert psi_test(a, b).value > 0.5


def test_small_samples_of_one_distribution_measure_about_the_predicted_noise() -> None:
    rng = np.random.default_rng(3)
    raws = [psi_test(rng.normal(size=1000), rng.normal(size=100)) for _ in range(200)]
    mean_raw = float(np.mean([t.raw for t in raws]))
    assert mean_raw == pytest.approx(raws[0].noise, rel=0.25)  # ~9 * (1/1000 + 1/100) = 0.099
    # the bias-corrected value stays far under 0.2 for same-distribution samples
    assert max(t.value - 3 * t.sd for t in raws) < 0.2


def test_a_discrete_output_merges_repeated_edges() -> None:
    stable = np.array([0.0] * 900 + [1.0] * 100)
    assert psi(stable, stable.copy()) == pytest.approx(0.0, abs=1e-12)
    assert psi(stable, np.array([0.0] * 500 + [1.0] * 500)) > 0.2


def test_agreement_is_relative_1e_6() -> None:
    a = {"y": np.array([1.0, 1000.0])}
    assert agrees(a, {"y": np.array([1.0 + 5e-7, 1000.0005])})
    assert not agrees(a, {"y": np.array([1.0 + 5e-6, 1000.0])})
    assert not agrees(a, {"y": np.array([1.0])})
    assert not agrees(a, {"z": np.array([1.0, 1000.0])})


def outcome(version: str, ok: bool = True, latency: float = 0.01, value: float = 0.0, *, shadow: bool = False,
            live_outputs: dict[str, np.ndarray] | None = None) -> Outcome:
    outputs = {"y": np.array([[value]]), "names": np.array([b"a"], dtype=object)} if ok else None
    return Outcome("m", version, ok, latency, outputs, shadow, live_outputs)


def test_window_counts_percentiles_and_values_per_version() -> None:
    stats = WindowStats(max_samples=50)
    stats.record(outcome("1"))  # not watched yet: dropped
    stats.watch("m")
    for i in range(100):
        stats.record(outcome("1", latency=(i + 1) / 1000, value=float(i)))
    stats.record(outcome("1", ok=False))
    stats.record(outcome("2", latency=0.5))
    one = stats.summary("m", "1")
    assert (one.samples, one.errors) == (101, 1) and one.error_rate == pytest.approx(1 / 101)
    # counts are exact; latencies and values come from the newest 50 kept
    assert len(one.latencies) == 49 and one.quantile(0.5) == pytest.approx(0.076)
    assert set(one.values) == {"y"}  # BYTES outputs have no value distribution
    assert one.values["y"].min() == 51.0
    assert stats.summary("m", "2").samples == 1
    assert stats.summary("m", "3").samples == 0
    stats.reset("m")
    assert stats.summary("m", "1").samples == 0


def test_shadow_outcomes_count_agreement_apart_from_live_ones() -> None:
    stats = WindowStats()
    stats.watch("m")
    live = {"y": np.array([[1.0]]), "names": np.array([b"a"], dtype=object)}
    stats.record(outcome("2", value=1.0, shadow=True, live_outputs=live))
    stats.record(outcome("2", value=2.0, shadow=True, live_outputs=live))
    shadow = stats.summary("m", "2", shadow=True)
    assert (shadow.compared, shadow.agreed) == (2, 1)
    assert list(shadow.live_values["y"]) == [1.0, 1.0]
    assert stats.summary("m", "2").samples == 0


def fill(stats: WindowStats, version: str, n: int, *, errors: int = 0, latency: float = 0.01,
         loc: float = 0.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        stats.record(outcome(version, ok=i >= errors, latency=latency * (1 + 0.05 * rng.random()),
                             value=float(rng.normal(loc))))


SPEC = RolloutSpec("m", "2", window_s=2, min_samples=50)


def verdict(canary: dict[str, float], stable_n: int = 900, final: bool = False) -> Verdict:
    stats = WindowStats()
    stats.watch("m")
    fill(stats, "1", stable_n, seed=1)
    n = int(canary.pop("n", 50))
    fill(stats, "2", n, seed=2, errors=int(canary.get("errors", 0)), latency=canary.get("latency", 0.01),
         loc=canary.get("loc", 0.0))
    return judge(SPEC, stats.summary("m", "2"), stats.summary("m", "1"), final=final)


def test_a_good_canary_passes_every_check() -> None:
    v = verdict({})
    assert v.breach is None and v.measured
    assert verdict({}, final=True).breach is None


@pytest.mark.parametrize(("canary", "check"), [
    ({"errors": 10}, "error_rate"),
    ({"latency": 0.03}, "p99_ratio"),
    ({"loc": 1.0}, "psi"),
])
def test_a_clearly_bad_canary_breaches_mid_window(canary: dict[str, float], check: str) -> None:
    v = verdict(canary)
    assert v.breach is not None and v.breach["check"] == check, v
    assert v.breach["samples"] == 50


def test_one_error_in_fifty_waits_for_the_window_end() -> None:
    assert verdict({"errors": 1}).breach is None
    end = verdict({"errors": 1}, final=True).breach
    assert end is not None and end["check"] == "error_rate" and end["canary"] == 0.02


def test_too_few_samples_measure_nothing() -> None:
    v = verdict({"errors": 5, "n": 20})
    assert v.breach is None and not v.measured


def test_wilson_lower_bound() -> None:
    assert wilson_lower(0, 100) == 0.0
    assert 0.05 < wilson_lower(10, 50) < 0.2
    assert wilson_lower(1, 50) < 0.01
