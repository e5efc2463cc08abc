"""One real ``inferlane serve --log-format json`` for the dashboard tests, with its own state folder
(where lanes leave their reports, store/lanes.py) and a 504-prone model for errors by status."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, _serve, write_slow_model

ROWS = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}


@pytest.fixture(scope="session")
def dash_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dash-state")


@pytest.fixture(scope="session")
def dash_server(tmp_path_factory: pytest.TempPathFactory, dash_state: Path) -> Iterator[Server]:
    """``quick`` answers in 2 ms, batches up to 8 requests; JSON logs at info, so request lines show."""
    repo = tmp_path_factory.mktemp("dash-models")
    write_slow_model(repo, "quick", delay=0.002, max_batch_size=8, max_queue_size=256, max_queue_delay_ms=2)
    log = tmp_path_factory.mktemp("dash-log") / "server.log"
    yield from _serve(repo, log, extra=["--log-format", "json", "--log-level", "info"],
                      env={"INFERLANE_STATE_DIR": str(dash_state)})


def infer(client: httpx.Client, url: str, **headers: str) -> httpx.Response:
    return client.post(f"{url}/v2/models/quick/infer", json=ROWS, headers=headers)
