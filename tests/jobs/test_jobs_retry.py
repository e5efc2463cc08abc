"""One retry rule in the jobs lane: what a failed attempt, a callback and the jobs CLI retry.

Real services throughout: an ``inferlane serve`` subprocess, an ``inferlane jobs worker``
subprocess against a real redis-server that is killed and restarted, real HTTP receivers on free
loopback ports, and the real ``inferlane jobs`` CLI.

- a permanent failure (the model raises) dead-letters a job after one attempt; a transient one
  (the model raises Unavailable, the job store goes away) is retried and the job succeeds;
- callbacks are retried on 5xx and 429 answers and connection errors, never on another 4xx;
- the CLI retries a server that is down or answers 503 a few times, then says so in one line.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml

from inferlane.lanes.jobs.callbacks import SIGNATURE_HEADER
from inferlane.store.jobs import JobRecord, JobStatus, open_job_store
from inferlane.testing import (
    HttpReceiver,
    RestartableRedis,
    exited,
    free_port,
    log_tail,
    stop_process,
    wait_until,
)
from tests.conftest import Server, _serve, write_slow_model

pytestmark = pytest.mark.e2e

FINAL = {"succeeded", "failed", "cancelled", "expired"}
SECRET = b"retry-test-secret"
JSON = {"Content-Type": "application/json"}

FLAKY_MODEL = textwrap.dedent('''
    from inferlane.core.errors import Unavailable

    class Model:
        """y = 2x. A first value below 0 raises (a model error). A first value of 1000 or more
        raises Unavailable (transient) on its first int(x[0, 1]) calls, then answers."""

        def load(self, version_dir):
            self.calls = {}

        def predict(self, batch):
            x = batch["x"]
            first = float(x[0, 0])
            if first < 0:
                raise ValueError(f"negative input {first}")
            if first >= 1000:
                n = self.calls[first] = self.calls.get(first, 0) + 1
                if n <= int(x[0, 1]):
                    raise Unavailable(f"feature store unreachable (call {n})")
            return {"y": x * 2.0}
''')


def body(*x: float) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": list(x)}]}


@pytest.fixture
def scripted() -> Iterator[list[HttpReceiver]]:
    """Make servers with ``start(scripted, [...])``; all are closed afterwards."""
    servers: list[HttpReceiver] = []
    yield servers
    for s in servers:
        s.close()


def start(servers: list[HttpReceiver], statuses: list[int], answer: dict[str, Any] | None = None) -> HttpReceiver:
    s = HttpReceiver(statuses, answer=answer or {})
    servers.append(s)
    return s


def signature_ok(header: str, data: bytes, url: str, job_id: str) -> bool:
    parts = dict(kv.split("=", 1) for kv in header.split(","))
    expected = hmac.new(SECRET, f"{parts['t']}.{job_id}.{url}.".encode() + data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(parts["v1"], expected)


# --- the server: attempts and dead letters -------------------------------------------------------

@pytest.fixture(scope="module")
def retry_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flaky (see FLAKY_MODEL) and sleepy (1 s per batch)."""
    repo = tmp_path_factory.mktemp("retry-models")
    (repo / "flaky" / "1").mkdir(parents=True)
    (repo / "flaky" / "1" / "model.py").write_text(FLAKY_MODEL)
    (repo / "flaky" / "model.yaml").write_text(yaml.safe_dump({
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
        "batching": {"max_batch_size": 1, "max_queue_size": 16, "max_queue_delay_ms": 0},
        "warmup": {"batch_sizes": []},  # random warm-up values could be negative
    }))
    write_slow_model(repo, "sleepy", delay=1.0)
    return repo


@pytest.fixture(scope="module")
def retry_server(retry_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"INFERLANE_JOBS_MAX_ATTEMPTS": "3", "INFERLANE_JOBS_RETRY_BACKOFF_S": "0.05",
           "INFERLANE_JOBS_CALLBACK_SECRET": SECRET.decode(), "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true"}
    yield from _serve(retry_repo, tmp_path_factory.mktemp("retry") / "server.log", env=env)


@pytest.fixture
def client(retry_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=retry_server.url, timeout=30) as c:
        yield c


def submit(client: httpx.Client, doc: dict[str, Any], model: str = "flaky") -> str:
    r = client.post(f"/v2/models/{model}/jobs", content=orjson.dumps(doc), headers=JSON)
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def final(client: httpx.Client, job_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = []

    def done() -> bool:
        jobs.append(client.get(f"/v2/jobs/{job_id}").json())
        return jobs[-1]["status"] in FINAL

    wait_until(done, f"job {job_id} is final", timeout_s)
    return jobs[-1]


def test_model_error_dead_letters_the_job_after_one_attempt(client: httpx.Client, scripted: list[HttpReceiver]) -> None:
    hook = start(scripted, [200])
    job_id = submit(client, {**body(-1, 0, 0, 0), "callback_url": f"{hook.url}/dead"})
    job = final(client, job_id)
    assert job["status"] == "failed"
    assert (job["attempts"], job["max_attempts"]) == (1, 3)  # the same input fails the same way: no retry
    assert "negative input -1.0" in job["error"] and "ValueError" in job["error"]
    assert job["result"] is None and job["finished_at"] is not None
    wait_until(lambda: hook.count >= 1, "the dead-letter callback arrived", 15)
    (call,) = hook.requests
    doc = orjson.loads(call.body)
    assert doc["status"] == "failed" and doc["attempts"] == 1 and doc["error"] == job["error"]


def test_transient_model_failures_are_retried_until_the_job_succeeds(client: httpx.Client) -> None:
    job = final(client, submit(client, body(1000, 2, 0, 0)))  # Unavailable twice, then answers
    assert job["status"] == "succeeded", job
    assert (job["attempts"], job["max_attempts"]) == (3, 3)
    (y,) = job["result"]["outputs"]
    assert y["data"] == [2000.0, 4.0, 0.0, 0.0]


def test_transient_failures_past_max_attempts_dead_letter_the_job(client: httpx.Client) -> None:
    job = final(client, submit(client, body(2000, 9, 0, 0)))  # Unavailable more often than attempts allow
    assert job["status"] == "failed", job
    assert job["attempts"] == job["max_attempts"] == 3
    assert job["error"] == "feature store unreachable (call 3)"


# --- callbacks through the server ----------------------------------------------------------------

def test_callback_answered_500_then_200_is_delivered_once(client: httpx.Client, scripted: list[HttpReceiver]) -> None:
    hook = start(scripted, [500, 200])
    job_id = submit(client, {**body(1, 2, 3, 4), "callback_url": f"{hook.url}/hook"})
    job = final(client, job_id)
    assert job["status"] == "succeeded"
    wait_until(lambda: hook.count >= 2, "the callback was retried after the 500", 15)
    first, second = hook.requests[:2]
    assert first.body == second.body and orjson.loads(second.body)["result"] == job["result"]
    assert all(signature_ok(r.headers[SIGNATURE_HEADER], r.body, f"{hook.url}/hook", job_id) for r in (first, second))


def test_callback_answered_400_gets_exactly_one_attempt(retry_server: Server, client: httpx.Client,
                                                        scripted: list[HttpReceiver]) -> None:
    hook = start(scripted, [400, 200])  # a retry would be answered 200: it must not happen
    url = f"{hook.url}/refuses"
    job = final(client, submit(client, {**body(5, 6, 7, 8), "callback_url": url}))
    assert job["status"] == "succeeded"
    # The lane logs the final outcome of a delivery: after that line, no other try can come.
    wait_until(lambda: f"callback to {url} not delivered after 1 attempt(s)" in retry_server.log.read_text(),
               "the server gave up the callback", 15)
    assert hook.count == 1
    assert "HTTP 400" in retry_server.log.read_text()


# --- the jobs CLI --------------------------------------------------------------------------------

def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferlane", "jobs", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_cli_gives_up_on_an_unreachable_server_with_one_line() -> None:
    t0 = time.monotonic()
    out = run_cli("status", "0" * 32, "--url", f"http://127.0.0.1:{free_port()}")
    elapsed = time.monotonic() - t0
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("cannot talk to the server at http://127.0.0.1:") and "failed 4 times" in line, line
    assert "ConnectError" in line
    assert elapsed < 20  # 4 tries about 2 s apart in all, plus the interpreter's start


def test_cli_retries_503_then_gives_up_with_one_idempotency_key(scripted: list[HttpReceiver], tmp_path: Path) -> None:
    server = start(scripted, [503])
    request = tmp_path / "request.json"
    request.write_bytes(orjson.dumps(body(1, 2, 3, 4)))
    out = run_cli("submit", "flaky", str(request), "--url", server.url)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert "failed 4 times" in line and "HTTP 503: scripted 503" in line, line
    assert server.count == 4
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(keys) == 1 and len(keys.pop()) == 32  # a retried submit can never make a second job
    assert {(r.method, r.path) for r in server.requests} == {("POST", "/v2/models/flaky/jobs")}


def test_cli_wait_rides_out_a_503(scripted: list[HttpReceiver]) -> None:
    job = {"id": "j1", "status": "succeeded", "attempts": 1, "result": None}
    server = start(scripted, [503, 503, 200], answer=job)
    out = run_cli("wait", "j1", "--url", server.url, "--timeout", "30")
    assert out.returncode == 0, out
    assert orjson.loads(out.stdout) == job and out.stderr == ""
    assert server.count == 3


# --- the standalone worker -----------------------------------------------------------------------

def test_worker_metrics_port_in_use_is_a_one_line_error(retry_repo: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "inferlane", "jobs", "worker", str(retry_repo), "--store",
                              f"sqlite:///{tmp_path / 'jobs.db'}", "--metrics-port", str(port)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out
    (line,) = out.stderr.strip().splitlines()
    assert line == f"--metrics-port {port} on 127.0.0.1: Address already in use", line


def test_outcome_is_stored_across_a_job_store_outage(retry_repo: Path, tmp_path: Path) -> None:
    """A worker runs a 1 s job; Redis is killed under it and started again once the worker has
    met the outage storing the outcome. The outcome write is retried: the job succeeds on its first
    attempt, with the right result, instead of waiting out its lease and running again."""
    redis_server = RestartableRedis(tmp_path / "redis")
    redis_server.start()
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "inferlane", "jobs", "worker", str(retry_repo), "--store", redis_server.url,
             "--concurrency", "1", "--log-level", "info"], stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "INFERLANE_JOBS_LEASE_S": "30"})
    store = open_job_store(redis_server.url)
    try:
        wait_until(lambda: b" ready: models " in log.read_bytes(), "the worker is ready", 60,
                   abort_if=[exited(worker, log)])
        job, _ = store.submit(JobRecord.new("sleepy", now=time.time(), request=orjson.dumps(body(1, 2, 3, 4))))

        def status() -> JobStatus | None:
            record = store.get(job.id)
            return None if record is None else record.status

        wait_until(lambda: status() is JobStatus.RUNNING, "the worker runs the job", 30, abort_if=[exited(worker, log)])
        redis_server.kill()  # SIGKILL: the append-only file already holds every write
        wait_until(lambda: f"job {job.id}: storing the outcome: Unavailable" in log.read_text(),
                   "the worker met the outage storing the outcome", 30, abort_if=[exited(worker, log)])
        redis_server.start()
        wait_until(lambda: status() in {JobStatus.SUCCEEDED, JobStatus.FAILED}, "the job is final", 30,
                   abort_if=[exited(worker, log)])
        done = store.get(job.id)
    finally:
        store.close()
        code = stop_process(worker)
        if redis_server.proc is not None:
            os.kill(redis_server.proc.pid, signal.SIGTERM)
            redis_server.proc.wait(10)
    assert done is not None and done.status is JobStatus.SUCCEEDED, (done, log_tail(log))
    assert done.attempts == 1, log_tail(log)
    assert done.result is not None
    (y,) = orjson.loads(done.result)["outputs"]
    assert np.allclose(y["data"], [2.0, 4.0, 6.0, 8.0])
    assert code == 0, log_tail(log)
    assert "job handler failed" not in log.read_text()
