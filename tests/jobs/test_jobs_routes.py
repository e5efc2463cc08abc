"""The jobs routes in process: the ASGI app over httpx's ASGITransport with a SQLite job store and no
worker, so every job stays queued. Submit (202 + Location), idempotent replay, status, listing,
cancel and their error statuses. Running jobs is the end-to-end suite's business (test_jobs_lane.py)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from inferlane.cli.client import render
from inferlane.core.metrics import Metrics
from inferlane.lanes.jobs import JobsLane
from inferlane.lanes.jobs.lane import JobsSettings
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.jobs import open_job_store
from inferlane.transport.http.app import build_http_app

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


def slow_body(i: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [i + k / 4 for k in range(4)]}]}


@contextlib.asynccontextmanager
async def jobs_client(model_repo: Path, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP app with the jobs routes over the session's models (loaded), a fresh SQLite store."""
    metrics = Metrics()
    registry = ModelRegistry.from_repository(model_repo, observer_factory=metrics.batch_observer)
    await registry.load_all()
    store = open_job_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    jobs = JobsLane(registry, store, JobsSettings(), metrics)
    app = build_http_app(OnlineLane(registry, metrics), jobs=jobs)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferlane") as c:
            yield c
    finally:
        await registry.close()
        store.close()


async def test_submit_status_and_idempotent_replay(model_repo: Path, tmp_path: Path) -> None:
    key = uuid.uuid4().hex
    async with jobs_client(model_repo, tmp_path) as c:
        first = await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)),
                             headers={**JSON, "Idempotency-Key": key})
        again = await c.post("/v2/models/slow/versions/1/jobs", content=orjson.dumps(slow_body(2)),
                             headers={**JSON, "Idempotency-Key": key})
        job = first.json()
        status = await c.get(f"/v2/jobs/{job['id']}")
    assert first.status_code == 202, first.text
    assert first.headers["location"] == f"/v2/jobs/{job['id']}" == job["status_url"]
    assert job["status"] == "queued" and job["model"] == "slow" and job["idempotency_key"] == key
    assert "idempotent-replayed" not in first.headers
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == job["id"]
    assert status.status_code == 200 and status.json() == job


async def test_listing_filters_and_refuses_bad_parameters(model_repo: Path, tmp_path: Path) -> None:
    async with jobs_client(model_repo, tmp_path) as c:
        ids = [(await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(i)), headers=JSON)).json()["id"]
               for i in range(3)]
        queued = (await c.get("/v2/jobs", params={"status": "queued", "model": "slow"})).json()["jobs"]
        one = (await c.get("/v2/jobs", params={"limit": "1"})).json()["jobs"]
        none = (await c.get("/v2/jobs", params={"model": "fraud"})).json()["jobs"]
        bad_status = await c.get("/v2/jobs", params={"status": "done"})
        bad_limits = [await c.get("/v2/jobs", params={"limit": v}) for v in ("0", "1001", "x")]
    assert {j["id"] for j in queued} == set(ids)
    assert len(one) == 1 and none == []
    assert bad_status.status_code == 400 and "status must be one of" in bad_status.json()["error"]
    assert [r.status_code for r in bad_limits] == [400, 400, 400]


async def test_cancel_a_queued_job_and_unknown_jobs(model_repo: Path, tmp_path: Path) -> None:
    async with jobs_client(model_repo, tmp_path) as c:
        job = (await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)), headers=JSON)).json()
        cancelled = await c.delete(f"/v2/jobs/{job['id']}")
        again = await c.delete(f"/v2/jobs/{job['id']}")
        missing = [await c.request(m, f"/v2/jobs/{uuid.uuid4().hex}") for m in ("GET", "DELETE")]
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json() == cancelled.json()
    assert [r.status_code for r in missing] == [404, 404]
    assert all("no job" in r.json()["error"] for r in missing)


@pytest.mark.parametrize(("path", "body", "status", "words"), [
    ("/v2/models/nope/jobs", orjson.dumps(slow_body(1)), 404, "nope"),
    ("/v2/models/slow/versions/9/jobs", orjson.dumps(slow_body(1)), 404, "no version '9'"),
    ("/v2/models/slow/jobs", b"{not json", 400, "JSON"),
    ("/v2/models/slow/jobs", b"[1, 2]", 400, "JSON object"),
    ("/v2/models/slow/jobs", orjson.dumps({"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4],
                                                       "data": [1, 2, 3, 4]}]}), 400, "nope"),
    ("/v2/models/slow/jobs", orjson.dumps({}), 400, "inputs or input_uri"),
    ("/v2/models/slow/jobs", orjson.dumps({"input_uri": "x.json"}), 400, "local paths are disabled"),
])
async def test_bad_submits_are_refused_and_store_nothing(model_repo: Path, tmp_path: Path, path: str, body: bytes,
                                                         status: int, words: str) -> None:
    async with jobs_client(model_repo, tmp_path) as c:
        r = await c.post(path, content=body, headers=JSON)
        listed = (await c.get("/v2/jobs")).json()["jobs"]
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert listed == []


async def test_a_wrong_method_on_a_jobs_route_is_405(model_repo: Path, tmp_path: Path) -> None:
    async with jobs_client(model_repo, tmp_path) as c:
        r = await c.put("/v2/jobs/abc")
        s = await c.get("/v2/models/slow/jobs")
    # NOTE: Allow names the methods of the first route on the path only (GET, HEAD); DELETE is served
    # by a second route on the same path and is missing from it.
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    assert "method PUT is not allowed" in r.json()["error"]
    assert s.status_code == 405 and "POST" in s.headers["allow"]


def test_the_cli_prints_a_job_with_one_line_per_tensor() -> None:
    data = [round(0.001 * i, 3) for i in range(1000)]
    job = {"id": "j", "status": "succeeded", "error": None, "tags": ["a,b", "c"], "empty": [], "none": {},
           "result": {"outputs": [{"name": "y", "datatype": "FP32", "shape": [500, 2], "data": data},
                                  {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["x, y", "z"]}]}}
    text = render(job)
    assert orjson.loads(text) == job  # still JSON, nothing changed
    assert len(text.splitlines()) < 30  # not one line per number
    assert any(line.strip().startswith('"data": [0.0, 0.001, 0.002') for line in text.splitlines())
    assert '"data": ["x, y", "z"]' in text and '"tags": ["a,b", "c"]' in text
