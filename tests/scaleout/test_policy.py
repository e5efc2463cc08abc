"""The scale policy and the --replicas range, with time passed by hand (no processes, no sleeps)."""

from __future__ import annotations

import pytest

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import desired_replicas
from inferlane.server.supervisor import ReplicaRange, ScalePolicy


def policy(low: int = 1, high: int = 4) -> ScalePolicy:
    return ScalePolicy(ReplicaRange(low, high), target=20, up_window_s=10, down_window_s=60)


def test_desired_replicas_is_ceil_of_load_over_target_at_least_one() -> None:
    assert [desired_replicas(x, 20) for x in (0, 1, 20, 21, 40, 41)] == [1, 1, 1, 2, 2, 3]


def test_scales_up_only_after_load_stays_above_target_for_the_window() -> None:
    p = policy()
    assert p.observe(0, 30, 1).delta == 0
    assert p.observe(9.9, 30, 1).delta == 0
    assert p.observe(10, 30, 1).delta == +1
    assert p.observe(11, 50, 2).delta == 0  # the next step needs a window of its own
    assert p.observe(20, 50, 2).delta == +1


def test_a_dip_restarts_the_window() -> None:
    p = policy()
    p.observe(0, 30, 1)
    p.observe(5, 10, 1)
    assert p.observe(12, 30, 1).delta == 0
    assert p.observe(21.9, 30, 1).delta == 0
    assert p.observe(22, 30, 1).delta == +1


def test_scales_down_after_the_longer_idle_window_and_never_below_min() -> None:
    p = policy(low=2)
    assert p.observe(0, 0, 4).delta == 0
    assert p.observe(59, 0, 4).delta == 0
    assert p.observe(60, 0, 4).delta == -1
    assert p.observe(120, 0, 3).delta == -1
    for t in range(180, 1000, 60):
        assert p.observe(t, 0, 2).delta == 0


def test_never_above_max() -> None:
    p = policy(high=2)
    for t in range(0, 100, 5):
        assert p.observe(t, 1000, 2).delta == 0


@pytest.mark.parametrize("text,low,high", [("1..3", 1, 3), ("2", 2, 2), (" 2 .. 8 ", 2, 8)])
def test_replica_range_parses(text: str, low: int, high: int) -> None:
    assert ReplicaRange.parse(text) == ReplicaRange(low, high)


@pytest.mark.parametrize("text,says", [("0..2", "at least 1"), ("3..1", "above MAX"), ("a..b", "MIN..MAX"),
                                       ("", "MIN..MAX"), ("1..999", "at most"), ("-1..2", "MIN..MAX")])
def test_replica_range_refuses_hostile_values(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ReplicaRange.parse(text)


def test_busy_replicas_are_not_scaled_down_on_a_short_queue() -> None:
    """Three replicas that keep up without queueing (load 2) but use 1.9 CPUs: two would run at 95%
    of their event loops, so the queue would grow back; nothing is removed. Once they use 1.2 CPUs
    (60% of two), one goes after the down window."""
    p = ScalePolicy(ReplicaRange(1, 4), target=20, up_window_s=10, down_window_s=60, cpus=4)
    for t in range(0, 200, 10):
        assert p.observe(t, 2, 3, busy_cpus=1.9).delta == 0
    assert p.observe(200, 2, 3, busy_cpus=1.2).delta == 0  # the window starts now
    assert p.observe(259, 2, 3, busy_cpus=1.2).delta == 0
    step = p.observe(260, 2, 3, busy_cpus=1.2)
    assert step.delta == -1 and "1.20 CPU" in step.reason


def test_the_machine_bounds_what_the_replicas_left_can_use() -> None:
    """Four replicas on a 2-CPU machine: three left could still use only 2 CPUs."""
    p = ScalePolicy(ReplicaRange(1, 4), target=20, up_window_s=10, down_window_s=0, cpus=2)
    assert not p.fits_fewer(1.5, 4) and p.fits_fewer(1.4, 4)
    assert p.observe(0, 0, 4, busy_cpus=1.5).delta == 0
    assert p.observe(1, 0, 4, busy_cpus=1.3).delta == -1
    assert p.fits_fewer(None, 4)  # unknown CPU use: load alone decides, as before
