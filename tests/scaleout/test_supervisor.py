"""``serve --replicas MIN..MAX`` end to end: a slow model (50 ms per request, one at a time, so one replica
carries 20 requests/s), short windows, real processes on one port."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferlane.testing.processes import process_tree
from inferlane.testing.server import ServerProcess, serve
from inferlane.testing.waiting import wait_until
from tests.conftest import write_slow_model
from tests.scaleout.helpers import OpenLoop, scrape

CAPACITY = 20.0  # requests/s of one replica
WINDOW = 2.0


def supervised(root: Path, replicas: str, down_window: float) -> Iterator[ServerProcess]:
    write_slow_model(root / "repo", delay=1 / CAPACITY, max_queue_size=1000)
    extra = ["--replicas", replicas, "--target-queue", "4", "--scale-window", str(WINDOW),
             "--scale-down-window", str(down_window), "--log-level", "info"]
    with serve(root / "repo", log_path=root / "server.log", extra=extra,
               env={"INFERLANE_JOBS_STORE": f"sqlite:///{root / 'jobs.db'}"}) as server:
        yield server


def replicas(server: ServerProcess) -> float:
    return scrape(server.url).get("inferlane_replicas", 0.0)


def replica_pids(server: ServerProcess) -> set[int]:
    return {p for p in process_tree(server.proc.pid) if p != server.proc.pid}


@pytest.fixture
def one_to_two(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from supervised(tmp_path, "1..2", down_window=4.0)


@pytest.fixture
def two_to_three(tmp_path: Path) -> Iterator[ServerProcess]:
    yield from supervised(tmp_path, "2..3", down_window=3.0)


def test_load_step_scales_up_within_the_window_then_down_after_idle(one_to_two: ServerProcess) -> None:
    server = one_to_two
    with OpenLoop(server.url, rate=0.1 * CAPACITY) as load:
        time.sleep(2 * WINDOW)
        assert replicas(server) == 1, "10% of one replica's capacity must not scale up"
        load.rate = 1.5 * CAPACITY
        stepped = time.monotonic()
        # the queue passes target (4) within ~0.4 s at +10/s; then one window; then the warm-up
        wait_until(lambda: replicas(server) == 2, "a second replica serves", WINDOW + 8)
        took = time.monotonic() - stepped
    assert took <= WINDOW + 8
    assert not load.failures_after(0), load.failures_after(0)[:5]
    # idle: down to MIN after the down window, and never below it
    wait_until(lambda: replicas(server) == 1, "back to one replica", 4.0 + 6)
    seen = set()
    for _ in range(20):
        seen.add(replicas(server))
        time.sleep(0.25)
    assert seen == {1.0}
    log = server.log.read_text()
    assert "scale up to 2 replica(s)" in log and "scale down to 1 replica(s)" in log


def test_a_killed_replica_is_replaced_and_no_request_after_fails(two_to_three: ServerProcess) -> None:
    server = two_to_three
    wait_until(lambda: replicas(server) == 2, "two replicas serve", 30)
    victim = min(replica_pids(server))
    with OpenLoop(server.url, rate=0.5 * CAPACITY) as load:
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(replica_pids(server) - {victim}) == 2 and replicas(server) == 2,
                   "the replacement serves", 30)
        replaced = time.monotonic()
        time.sleep(2.0)
    assert not load.failures_after(replaced), load.failures_after(replaced)[:5]
    assert len([1 for t, _ in load.results if t >= replaced]) >= 15
    # idle for several down windows: never below MIN
    for _ in range(16):
        assert replicas(server) == 2
        time.sleep(0.5)
    assert f"replica pid {victim} exited" in server.log.read_text()
