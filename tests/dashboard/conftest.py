"""One real ``inferlane serve --log-format json`` for the dashboard tests, with its own state folder
(where lanes leave their reports, store/lanes.py) and a 504-prone model for errors by status."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, _serve, write_slow_model

ADMIN_TOKEN = "dashboard-test-admin-token-0123456789"
ROWS = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="session")
def dash_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dash-state")


@pytest.fixture(scope="session")
def dash_server(tmp_path_factory: pytest.TempPathFactory, dash_state: Path) -> Iterator[Server]:
    """``quick`` answers in 2 ms, batches up to 8 requests; ``canary`` has versions 1 and 2 (2 serves) for
    a rollout; the admin API is on (to start one); JSON logs at info, so request lines show."""
    repo = tmp_path_factory.mktemp("dash-models")
    write_slow_model(repo, "quick", delay=0.002, max_batch_size=8, max_queue_size=256, max_queue_delay_ms=2)
    shutil.copytree(write_slow_model(repo, "canary", delay=0.001) / "1", repo / "canary" / "2")
    log = tmp_path_factory.mktemp("dash-log") / "server.log"
    yield from _serve(repo, log, extra=["--log-format", "json", "--log-level", "info"],
                      env={"INFERLANE_STATE_DIR": str(dash_state), "INFERLANE_ADMIN_TOKEN": ADMIN_TOKEN,
                           "INFERLANE_ROLLOUT_STORE": f"sqlite:///{dash_state / 'rollouts.db'}"})


def infer(client: httpx.Client, url: str, **headers: str) -> httpx.Response:
    return client.post(f"{url}/v2/models/quick/infer", json=ROWS, headers=headers)
