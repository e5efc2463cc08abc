"""A real batch job and a real stream lane (Redis Streams) leave their progress and lag in the state
folder, and the server's ``/dashboard/data`` shows them (store/lanes.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest

from inferlane.lanes.batch import run_batch
from inferlane.lanes.stream import StreamJob, StreamSettings, run_stream
from inferlane.testing.waiting import wait_until
from tests.batch.test_batch_lane import dataset, job
from tests.conftest import Server
from tests.stream.support import fraud_events, stream_url, xadd_events

pytestmark = pytest.mark.e2e


def _data(server: Server) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{server.url}/dashboard/data", timeout=10).json()
    return doc


def test_a_batch_job_shows_its_progress(dash_server: Server, dash_state: Path, model_repo: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(dash_state))  # the server's state folder
    inp = tmp_path / "in"
    inp.mkdir()
    pq.write_table(dataset(1500), inp / "x.parquet", row_group_size=500)
    report = run_batch(job(model_repo, inp, tmp_path / "out", job_id="dash-batch", shard_rows=500))
    assert report["rows_written"] == 1500
    (b,) = [b for b in _data(dash_server)["batches"] if b["name"] == "dash-batch"]
    assert (b["model"], b["state"], b["rows_done"], b["rows_planned"]) == ("fraud", "ended", 1500, 1500)
    assert (b["shards_done"], b["shards_planned"]) == (3, 3)


def test_a_stream_lane_shows_its_lag_per_partition(dash_server: Server, dash_state: Path, model_repo: Path,
                                                   redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERLANE_STATE_DIR", str(dash_state))
    xadd_events(redis_url, "dash:events", fraud_events(200))
    stream_job = StreamJob(model=str(model_repo / "fraud"), source=stream_url(redis_url, "dash:events"),
                           group="dash-g", sink=stream_url(redis_url, "dash:scores"),
                           dlq=stream_url(redis_url, "dash:dlq"), key="id",
                           settings=StreamSettings(max_batch=64, max_wait_ms=10))
    stop = threading.Event()
    reports: list[dict[str, Any]] = []
    lane = threading.Thread(target=lambda: reports.append(run_stream(stream_job, stop)), daemon=True)
    lane.start()

    def shown() -> dict[str, Any] | None:
        return next((s for s in _data(dash_server)["streams"] if s["name"] == "dash-g"), None)

    try:
        wait_until(lambda: (shown() or {}).get("in") == 200, "the dashboard shows the lane's 200 events",
                   timeout_s=30, abort_if=[lambda: None if lane.is_alive() else "the stream lane stopped"])
        s = shown()
        assert s is not None and s["state"] == "running" and s["model"] == "fraud"
        assert s["lag"] and all(n >= 0 for n in s["lag"].values())  # one entry per stream/partition
    finally:
        stop.set()
        lane.join(30)
    assert reports and reports[0]["events_out"] == 200
    s = shown()
    assert s is not None and s["state"] == "ended"
