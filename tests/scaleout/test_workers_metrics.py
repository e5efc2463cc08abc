"""``serve --workers 2``: every scrape of /metrics answers for the whole server, whichever worker it reaches."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from inferlane.testing.server import ServerProcess, serve
from inferlane.testing.waiting import wait_until
from tests.conftest import write_slow_model
from tests.scaleout.helpers import OpenLoop, scrape


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("workers")
    # the kernel may hand every connection to one worker: 10 requests then wait up to 15 s there
    write_slow_model(root / "repo", delay=1.5, timeout_ms=30_000, max_queue_size=100)
    with serve(root / "repo", log_path=root / "server.log", extra=["--workers", "2", "--target-queue", "4"],
               env={"INFERLANE_JOBS_STORE": f"sqlite:///{root / 'jobs.db'}"}) as server:
        # ready answers once one worker is; the test needs both
        wait_until(lambda: scrape(server.url).get("inferlane_replicas") == 2, "both workers serve", 60)
        yield server


def test_every_scrape_counts_every_workers_requests(two_workers: ServerProcess) -> None:
    n = 4
    with OpenLoop(two_workers.url, rate=50, count=n) as load:
        pass  # leaving waits for every answer (1.5 s each, one at a time per worker)
    assert len(load.results) == n, load.results
    assert all(code == 200 for _, code in load.results), load.results
    scrapes = [scrape(two_workers.url) for _ in range(20)]
    assert {s["inferlane_replicas"] for s in scrapes} == {2.0}
    assert {s["inferlane_requests_total"] for s in scrapes} == {float(n)}
    # the statistics extension too: every answer counts every worker's requests
    stats = [httpx.get(f"{two_workers.url}/v2/models/slow/stats", timeout=10).json()["model_stats"][0]
             for _ in range(20)]
    assert {(s["inference_count"], s["execution_count"], s["inference_stats"]["success"]["count"]) for s in stats} \
        == {(n, n, n)}
    assert {tuple(b["compute_infer"]["count"] for b in s["batch_stats"]) for s in stats} == {(n,)}


def test_queue_depth_and_desired_replicas_sum_over_workers(two_workers: ServerProcess) -> None:
    before = scrape(two_workers.url)["inferlane_requests_total"]
    k = 10
    with OpenLoop(two_workers.url, rate=100, count=k) as load:
        time.sleep(k / 100 + 0.5)  # every worker has published its queue (each 0.25 s); none has answered (1.5 s each)
        scrapes = [scrape(two_workers.url) for _ in range(5)]
    assert len(load.results) == k
    for s in scrapes:
        assert s["inferlane_requests_total"] == before
        assert s["inferlane_queue_depth"] + s["inferlane_inflight_batches"] == k, s
        assert s["inferlane_desired_replicas"] == 3  # ceil(10 / 4)
