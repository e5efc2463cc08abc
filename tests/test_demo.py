"""The demo keeps what a new user needs next: ``inferlane demo --workdir DIR`` leaves a model repository
and a request file that the server accepts as it is (the README's curl example sends it)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferlane.core.metrics import Metrics
from inferlane.demo.models import N_FEATURES, write_request
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.transport.http.app import build_http_app

pytestmark = pytest.mark.anyio


async def post_request(repo: Path, body: bytes) -> httpx.Response:
    """POST ``body`` (a request file's bytes, as they are on disk) to the fraud model of ``repo``,
    in process (ASGI)."""
    metrics = Metrics()
    registry = ModelRegistry.from_repository(repo, observer_factory=metrics.batch_observer)
    await registry.load_all()
    app = build_http_app(OnlineLane(registry, metrics))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferlane") as c:
            return await c.post("/v2/models/fraud/infer", content=body,
                                headers={"content-type": "application/json"})
    finally:
        await registry.close()


def assert_scored(r: httpx.Response, rows: int) -> None:
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "tx-1"
    probabilities = {o["name"]: o for o in doc["outputs"]}["probabilities"]
    assert probabilities["shape"] == [rows, 2]
    assert np.allclose(np.asarray(probabilities["data"]).reshape(rows, 2).sum(axis=1), 1.0, atol=1e-5)


async def test_request_file_is_a_valid_request(model_repo: Path, tmp_path: Path) -> None:
    request = write_request(tmp_path / "request.json", rows=3)
    assert_scored(await post_request(model_repo, request.read_bytes()), 3)
    assert json.loads(request.read_text())["inputs"][0]["shape"] == [3, N_FEATURES]


def test_readme_shows_the_request_the_demo_writes(tmp_path: Path) -> None:
    # The README's curl example sends the demo's request.json and prints it: the two must agree.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"```json\n(\{\"id\": \"tx-1\".*?)```", readme, re.S)
    assert shown is not None, "README.md: the JSON request of the curl example is missing"
    assert json.loads(shown.group(1)) == json.loads(write_request(tmp_path / "request.json").read_text())


@pytest.mark.e2e
def test_demo_workdir_keeps_a_model_and_a_request_the_server_accepts(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "inferlane", "demo", "--workdir", str(workdir),
                           "--requests", "200", "--concurrency", "4"],
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"--data-binary @{workdir / 'request.json'}" in done.stdout
    assert (workdir / "models" / "fraud" / "model.yaml").is_file()
    body = (workdir / "request.json").read_bytes()
    assert_scored(asyncio.run(post_request(workdir / "models", body)), 1)
