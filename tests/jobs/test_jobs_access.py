"""Who may see a job, what a job may name, and a worker that outlives its store's faults: the HTTP app
in process (httpx's ASGITransport) over real stores (a SQLite file, a real redis-server), with an
in-process JobWorker where jobs must run."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from inferlane.core.errors import ConfigError
from inferlane.core.metrics import Metrics
from inferlane.lanes.jobs import JobsLane, JobWorker
from inferlane.lanes.jobs.access import ApiKeys, check_open_access
from inferlane.lanes.jobs.lane import JobsSettings, parse_s3_allow
from inferlane.lanes.online import OnlineLane
from inferlane.rollout.registry import ModelRegistry
from inferlane.store.jobs import JobRecord, open_job_store
from inferlane.testing import free_port, redis_server
from inferlane.transport.http.app import build_http_app

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
KEY_A = "acme-0123456789abcdef"
KEY_B = "umbrella-0123456789abcdef"
KEYS = ApiKeys.parse(f"acme:{KEY_A}, umbrella:{KEY_B}")
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}

BYTES_MODEL = '''
import numpy as np

class Model:
    def load(self, version_dir):
        pass

    def predict(self, batch):
        s = batch["s"]
        return {"n": np.array([[sum(x) for x in row] for row in s], dtype=np.int64)}
'''


def slow_body(i: int) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [i + k / 4 for k in range(4)]}]}


@dataclass
class App:
    client: httpx.AsyncClient
    lane: JobsLane
    worker: JobWorker | None


@contextlib.asynccontextmanager
async def jobs_app(repo: Path, store_url: str, *, api_keys: ApiKeys | None = None, run_worker: bool = False,
                   **settings: Any) -> AsyncIterator[App]:
    metrics = Metrics()
    registry = ModelRegistry.from_repository(repo, observer_factory=metrics.batch_observer)
    await registry.load_all()
    store = open_job_store(store_url)
    lane = JobsLane(registry, store, JobsSettings(poll_interval_s=0.05, **settings), metrics, api_keys=api_keys)
    app = build_http_app(OnlineLane(registry, metrics), jobs=lane)
    worker = JobWorker(lane) if run_worker else None
    task = asyncio.create_task(worker.run()) if worker is not None else None
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://inferlane") as c:
            yield App(c, lane, worker)
    finally:
        if worker is not None and task is not None:
            await worker.stop(5.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.close()
        store.close()


async def wait_for(check: Any, what: str, timeout_s: float = 20.0) -> None:
    """Await ``check()`` (an async predicate) until it is true; the event loop keeps running meanwhile."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def final(c: httpx.AsyncClient, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async def done() -> bool:
        return bool((await c.get(f"/v2/jobs/{job_id}", headers=headers)).json()["status"]
                    in ("succeeded", "failed"))

    await wait_for(done, f"job {job_id} to finish")
    doc: dict[str, Any] = (await c.get(f"/v2/jobs/{job_id}", headers=headers)).json()
    return doc


# --- API keys and tenants ------------------------------------------------------------------------

async def test_api_keys_scope_jobs_to_their_tenant(model_repo: Path, store_url: str) -> None:
    """401 without a valid key; another tenant's job is 404 for get and cancel, and absent from its
    listing; idempotency keys are per tenant; listings carry no result."""
    async with jobs_app(model_repo, store_url, api_keys=KEYS) as app:
        c = app.client
        body = orjson.dumps(slow_body(1))
        assert (await c.post("/v2/models/slow/jobs", content=body, headers=JSON)).status_code == 401
        bad = await c.post("/v2/models/slow/jobs", content=body,
                           headers={**JSON, "Authorization": "Bearer not-a-key-of-anyone"})
        assert bad.status_code == 401 and "not valid" in bad.json()["error"]
        assert (await c.get("/v2/jobs")).status_code == 401
        mine = await c.post("/v2/models/slow/jobs", content=body, headers={**JSON, **A, "Idempotency-Key": "k"})
        theirs = await c.post("/v2/models/slow/jobs", content=body, headers={**JSON, **B, "Idempotency-Key": "k"})
        assert mine.status_code == theirs.status_code == 202
        job_a, job_b = mine.json()["id"], theirs.json()["id"]
        assert job_a != job_b  # one key, two tenants: two jobs
        again = await c.post("/v2/models/slow/jobs", content=body, headers={**JSON, **A, "Idempotency-Key": "k"})
        assert again.json()["id"] == job_a and again.headers["idempotent-replayed"] == "true"

        assert (await c.get(f"/v2/jobs/{job_a}", headers=A)).status_code == 200
        assert (await c.get(f"/v2/jobs/{job_a}", headers=B)).status_code == 404
        assert (await c.get(f"/v2/jobs/{job_a}")).status_code == 401
        assert (await c.delete(f"/v2/jobs/{job_a}", headers=B)).status_code == 404
        listed_b = (await c.get("/v2/jobs", headers=B)).json()["jobs"]
        assert [j["id"] for j in listed_b] == [job_b]
        assert "result" not in listed_b[0] and listed_b[0]["tenant"] == "umbrella"
        assert (await c.get(f"/v2/jobs/{job_a}", headers=A)).json()["status"] == "queued"  # B's cancel did nothing
        assert (await c.delete(f"/v2/jobs/{job_a}", headers=A)).json()["status"] == "cancelled"


async def test_listing_limit_must_be_a_plain_integer(model_repo: Path, tmp_path: Path) -> None:
    async with jobs_app(model_repo, f"sqlite:///{tmp_path / 'jobs.db'}") as app:
        for limit in ("²", "1e3", "-1", "0", "1001", " 5"):
            r = await app.client.get("/v2/jobs", params={"limit": limit})
            assert r.status_code == 400, (limit, r.text)
            assert "limit" in r.json()["error"]
        assert (await app.client.get("/v2/jobs", params={"limit": "1000"})).status_code == 200
        for status in ("", "done", "QUEUED"):
            r = await app.client.get("/v2/jobs", params={"status": status})
            assert r.status_code == 400 and "status must be one of" in r.json()["error"], (status, r.text)


def test_api_keys_inline_or_from_a_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# tenants\nacme:{KEY_A}\n\numbrella:{KEY_B}  # the other one\n")
    from_file = ApiKeys.parse(str(keys))
    assert from_file == KEYS
    assert from_file.tenant_of(f"Bearer {KEY_B}") == "umbrella"
    assert from_file.tenant_of(f"bearer  {KEY_A} ") == "acme"
    assert KEY_A not in repr(from_file)  # only digests are kept
    for bad, words in ((f"acme{KEY_A}", "cannot read the key file"), ("acme:short", "shorter than 16"),
                       (f"acme:{KEY_A},other:{KEY_A}", "listed twice"), (f":{KEY_A}", "not TENANT:KEY"),
                       (" , ", "no TENANT:KEY")):
        with pytest.raises(ConfigError, match=words) as e:
            ApiKeys.parse(bad)
        assert "INFERLANE_API_KEYS" in e.value.message
        assert KEY_A not in e.value.message


def test_without_keys_the_jobs_api_stays_on_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_open_access(None, host, allow_open=False)
    with pytest.raises(ConfigError, match="INFERLANE_API_KEYS") as e:
        check_open_access(None, "0.0.0.0", allow_open=False)
    assert "INFERLANE_JOBS_OPEN" in e.value.message
    check_open_access(None, "0.0.0.0", allow_open=True)
    check_open_access(KEYS, "0.0.0.0", allow_open=False)


# --- what a job may name -------------------------------------------------------------------------

async def test_uris_are_checked_at_submit(model_repo: Path, tmp_path: Path) -> None:
    """s3:// only under INFERLANE_JOBS_S3_ALLOW (at a / boundary, no dot segments); a local
    output_uri or input_uri only with INFERLANE_JOBS_LOCAL_ROOT. Refused at submit with 400."""
    allow = parse_s3_allow("s3://in-bucket/data/, s3://out-bucket")
    async with jobs_app(model_repo, f"sqlite:///{tmp_path / 'jobs.db'}", s3_allow=allow) as app:
        async def post(doc: dict[str, Any]) -> httpx.Response:
            return await app.client.post("/v2/models/slow/jobs", content=orjson.dumps(doc), headers=JSON)

        for doc, words in (
                ({"input_uri": "s3://other/x.json"}, "INFERLANE_JOBS_S3_ALLOW"),
                ({"input_uri": "s3://in-bucket/database/x.json"}, "INFERLANE_JOBS_S3_ALLOW"),
                ({"input_uri": "s3://in-bucket/data/../secret.json"}, "INFERLANE_JOBS_S3_ALLOW"),
                ({**slow_body(1), "output_uri": "s3://elsewhere/out"}, "INFERLANE_JOBS_S3_ALLOW"),
                ({**slow_body(1), "output_uri": "results"}, "INFERLANE_JOBS_LOCAL_ROOT"),
                ({"input_uri": "x.json"}, "INFERLANE_JOBS_LOCAL_ROOT"),
                ({**slow_body(1), "output_uri": "file:///etc"}, "s3:// URI or a local path")):
            r = await post(doc)
            assert r.status_code == 400, (doc, r.text)
            assert words in r.json()["error"], r.text
            assert "jobs_local_root" not in r.json()["error"]
        assert (await post({"input_uri": "s3://in-bucket/data/x.json"})).status_code == 202
        assert (await post({**slow_body(1), "output_uri": "s3://out-bucket/any/where"})).status_code == 202
        assert len((await app.client.get("/v2/jobs")).json()["jobs"]) == 2
    with pytest.raises(ConfigError, match="INFERLANE_JOBS_S3_ALLOW"):
        parse_s3_allow("in-bucket/data")


# --- BYTES inputs are stored losslessly ----------------------------------------------------------

def binary_request(values: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A V2 request in the binary tensor extension: one BYTES input ``s`` of shape [n, 1]."""
    raw = b"".join(struct.pack("<I", len(v)) + v for v in values)
    header = orjson.dumps({"inputs": [{"name": "s", "datatype": "BYTES", "shape": [len(values), 1],
                                       "parameters": {"binary_data_size": len(raw)}}]})
    return header + raw, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))}


async def test_a_bytes_job_answers_what_the_online_lane_answers(tmp_path: Path) -> None:
    """Non-UTF-8 BYTES elements reach the model byte for byte through a job, as they do online."""
    repo = tmp_path / "repo"
    (repo / "bytesum" / "1").mkdir(parents=True)
    (repo / "bytesum" / "1" / "model.py").write_text(BYTES_MODEL)
    (repo / "bytesum" / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python", "inputs": [{"name": "s", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [{"name": "n", "datatype": "INT64", "shape": [-1, 1]}], "warmup": {"batch_sizes": []}}))
    values = [b"\xff\xfe\x00raw", b"caf\xe9", b"plain"]
    body, headers = binary_request(values)
    async with jobs_app(repo, f"sqlite:///{tmp_path / 'jobs.db'}", run_worker=True) as app:
        online = await app.client.post("/v2/models/bytesum/infer", content=body, headers=headers)
        assert online.status_code == 200, online.text
        submitted = await app.client.post("/v2/models/bytesum/jobs", content=body, headers=headers)
        assert submitted.status_code == 202, submitted.text
        done = await final(app.client, submitted.json()["id"])
    assert done["status"] == "succeeded", done
    expected = [[sum(v)] for v in values]
    assert online.json()["outputs"][0]["data"] == [n for (n,) in expected]
    assert done["result"]["outputs"] == online.json()["outputs"]


# --- the worker outlives a failing store ---------------------------------------------------------

async def test_worker_survives_a_read_only_redis_and_reports_it(model_repo: Path, tmp_path: Path) -> None:
    """Redis turned into a read-only replica (what a failover does to the old primary): the worker
    does not die; /ready answers 503 naming the job store, the worker gauge reads 0, submits get
    503; once Redis takes writes again, everything recovers and jobs run."""
    (tmp_path / "redis").mkdir()
    with redis_server(tmp_path / "redis") as url:
        admin = redis.Redis.from_url(url)
        try:
            async with jobs_app(model_repo, url, run_worker=True) as app:
                c = app.client
                first = await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)), headers=JSON)
                assert (await final(c, first.json()["id"]))["status"] == "succeeded"
                assert (await c.get("/v2/health/ready")).status_code == 200

                # A job that becomes claimable only once Redis is read-only: claiming it is a write.
                now = time.time()
                delayed = replace(JobRecord.new("slow", now=now, request=orjson.dumps(slow_body(2))),
                                  available_at=now + 1.0)
                app.lane.store.submit(delayed)
                admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a primary that is not there

                async def not_ready() -> bool:
                    return (await c.get("/v2/health/ready")).status_code == 503

                await wait_for(not_ready, "readiness to report the failing store")
                ready = (await c.get("/v2/health/ready")).json()
                assert ready["ready"] is False and "job store" in ready["error"], ready
                metrics = (await c.get("/metrics")).text
                assert 'inferlane_jobs_worker_healthy{lane="jobs",model="*",version="*"} 0.0' in metrics
                refused = await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(2)), headers=JSON)
                assert refused.status_code == 503, refused.text

                admin.execute_command("REPLICAOF", "NO", "ONE")

                async def is_ready() -> bool:
                    return (await c.get("/v2/health/ready")).status_code == 200

                await wait_for(is_ready, "readiness to come back")
                assert (await final(c, delayed.id))["status"] == "succeeded"
                second = await c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(3)), headers=JSON)
                assert second.status_code == 202
                assert (await final(c, second.json()["id"]))["status"] == "succeeded"
                assert 'inferlane_jobs_worker_healthy{lane="jobs",model="*",version="*"} 1.0' in (
                    await c.get("/metrics")).text
        finally:
            admin.close()


def test_a_store_password_never_reaches_the_worker_output(model_repo: Path, tmp_path: Path) -> None:
    """``inferlane jobs worker`` against a real redis-server that needs a password: the start line
    names the store without it; a wrong one is a usage error at start (exit 2, one line), not a
    worker that says it is ready and retries forever."""
    import subprocess
    import sys

    from inferlane.testing import accepts_connections, stop_process, wait_until

    secret, port = "s3cret-Pa55word", free_port()
    redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--requirepass", secret, "--dir", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: accepts_connections(port), "redis-server accepts connections", 10)
        worker = subprocess.Popen([sys.executable, "-m", "inferlane", "jobs", "worker", str(model_repo),
                                   "--store", f"redis://:{secret}@127.0.0.1:{port}/0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert worker.stdout is not None
            line = worker.stdout.readline()
        finally:
            stop_process(worker)
        _, err = worker.communicate()
        assert "ready" in line and f"redis://:***@127.0.0.1:{port}/0" in line, line + err
        assert secret not in line + err
        wrong = subprocess.run([sys.executable, "-m", "inferlane", "jobs", "worker", str(model_repo),
                                "--store", f"redis://:not-{secret}@127.0.0.1:{port}/0"],
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 2 and "ready" not in wrong.stdout, wrong.stdout + wrong.stderr
        assert "refused the user or password" in wrong.stderr and "INFERLANE_JOBS_STORE" in wrong.stderr
        assert "Traceback" not in wrong.stderr and secret not in wrong.stdout + wrong.stderr, wrong.stderr
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
