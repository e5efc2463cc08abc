"""The jobs lane end to end: real `inferlane serve` and `inferlane jobs worker` subprocesses, real
sockets, a real redis-server and SQLite files, a real HTTP receiver for callbacks.

Servers (module-scoped, each on a free port with its job store in a temp folder):

- ``accept_server`` (SQLite and Redis): ``INFERLANE_JOBS_WORKERS=0``, so it only accepts jobs;
  standalone workers run them (crash test), and jobs for models no worker serves stay queued
  (idempotency, cancel, CLI timeouts).
- ``main_server``: in-process workers, fast retries, a callback secret, a local input folder.
- ``ttl_server``: results kept 1 s, expiry every 0.2 s, private callback targets refused.
- ``own_server`` (per test): main_server's settings, stopped by the test to make its callbacks final.

Online latency while a flood of jobs drains is measured by the jobs benchmark
(``python -m benchmarks.jobs``), not asserted here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from inferlane.demo.models import synthetic_transactions
from inferlane.testing import HttpReceiver, exited, free_port, stop_process, wait_until
from tests.conftest import X4, Server, _serve, write_python_model, write_slow_model

pytestmark = pytest.mark.e2e

FINAL = {"succeeded", "failed", "cancelled", "expired"}
SECRET = "test-callback-secret"
JSON = {"Content-Type": "application/json"}

BOOM_MODEL = textwrap.dedent('''
    class Model:
        def load(self, version_dir):
            pass

        def predict(self, batch):
            raise RuntimeError("boom: this model always fails")
''')


# --- helpers -------------------------------------------------------------------------------------

def slow_body(i: int) -> dict[str, Any]:
    """A distinct one-row request for the slow models: x = [i, i + 0.25, i + 0.5, i + 0.75]."""
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [i + k / 4 for k in range(4)]}]}


def fraud_body(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.ravel().tolist()}], **extra}


def submit(client: httpx.Client, model: str, doc: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    headers = {**JSON, **({"Idempotency-Key": key} if key else {})}
    r = client.post(f"/v2/models/{model}/jobs", content=orjson.dumps(doc), headers=headers)
    assert r.status_code == 202, r.text
    job: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/v2/jobs/{job['id']}" == job["status_url"]
    return job


def wait_final(client: httpx.Client, job_ids: list[str], timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    """Poll until every job is in a final state; their records by id."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in job_ids:
            if job_id not in done:
                job = client.get(f"/v2/jobs/{job_id}").json()
                if job["status"] in FINAL:
                    done[job_id] = job
        if len(done) == len(job_ids):
            return done
        if time.monotonic() > deadline:
            pending = Counter(client.get(f"/v2/jobs/{j}").json()["status"] for j in job_ids if j not in done)
            raise AssertionError(f"{len(job_ids) - len(done)} jobs not final after {timeout} s: {dict(pending)}")
        time.sleep(0.05)


def listing(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    r = client.get("/v2/jobs", params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as r:
        yield r


def verify_signature(header: str, body: bytes, secret: bytes, url: str, job_id: str) -> bool:
    """The receiver's side of ``Inferlane-Signature: t=..,v1=..`` over the timestamp, the job id, the
    URL the receiver registered and the body (computed here, independently)."""
    parts = dict(kv.split("=", 1) for kv in header.split(","))
    signed = f"{parts['t']}.{job_id}.{url}.".encode() + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return abs(int(parts["t"]) - time.time()) < 300 and hmac.compare_digest(parts["v1"], expected)


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferlane", "jobs", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


# --- standalone workers --------------------------------------------------------------------------

@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def wait_ready(self, timeout: float = 60.0) -> None:
        wait_until(lambda: b" ready: models " in self.log.read_bytes(), "the worker is ready", timeout,
                   interval_s=0.02, abort_if=[exited(self.proc, self.log)])

    def outcomes(self) -> Counter[str]:
        """This worker's ``inferlane_job_outcomes_total`` by outcome (all models)."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        out: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "inferlane_job_outcomes_total":
                    out[s.labels["outcome"]] += int(s.value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # in case it is stopped
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_worker(repo: Path, store_url: str, env: dict[str, str], log: Path) -> Worker:
    port = free_port()
    cmd = [sys.executable, "-m", "inferlane", "jobs", "worker", str(repo), "--store", store_url,
           "--concurrency", "4", "--metrics-port", str(port), "--log-level", "info"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    return Worker(proc, log, port)


def sqlite_lock_free(store_url: str) -> bool:
    """True unless some process holds the SQLite store's write lock (always True for Redis)."""
    if not store_url.startswith("sqlite:///"):
        return True
    con = sqlite3.connect(store_url.removeprefix("sqlite:///"), timeout=0.2, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def freeze(worker: Worker, store_url: str) -> None:
    """SIGSTOP the worker, but never while it holds SQLite's write lock (that would stall everyone
    for the store's busy timeout, which is not what this test is about)."""
    for _ in range(100):
        os.kill(worker.proc.pid, signal.SIGSTOP)
        if sqlite_lock_free(store_url):
            return
        os.kill(worker.proc.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the worker always held the SQLite write lock")


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def jobs_repo(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fraud and slow (from the session repo), plus: slowjob (200 ms per batch of up to 8),
    sleepy (1 s per batch), boom (always raises)."""
    repo = tmp_path_factory.mktemp("jobs-models") / "repo"
    shutil.copytree(model_repo, repo)
    write_slow_model(repo, "slowjob", delay=0.2, max_batch_size=8, max_queue_size=64, max_queue_delay_ms=20)
    write_slow_model(repo, "sleepy", delay=1.0, max_batch_size=8, max_queue_size=64)
    write_python_model(repo, "boom", BOOM_MODEL,
                       {**X4, "warmup": {"batch_sizes": []}})  # it would fail its warm-up
    return repo


@pytest.fixture(scope="module")
def worker_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only slowjob: standalone workers never touch the other models' jobs."""
    repo = tmp_path_factory.mktemp("worker-models")
    write_slow_model(repo, "slowjob", delay=0.2, max_batch_size=8, max_queue_size=64, max_queue_delay_ms=20)
    return repo


@dataclass
class AcceptServer:
    server: Server
    store_url: str
    env: dict[str, str]


ACCEPT_ENV = {"INFERLANE_JOBS_WORKERS": "0", "INFERLANE_JOBS_LEASE_S": "2",
              "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true"}


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def accept_server(request: pytest.FixtureRequest, jobs_repo: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcceptServer]:
    folder = tmp_path_factory.mktemp(f"accept-{request.param}")
    if request.param == "sqlite":
        store_url = f"sqlite:///{folder / 'jobs.db'}"
    else:
        base: str = request.getfixturevalue("redis_url")
        store_url = base.rsplit("/", 1)[0] + "/1"  # a database of its own: the store tests flush /0
        client = redis.Redis.from_url(store_url)
        try:
            client.flushdb()
        finally:
            client.close()
    env = {**ACCEPT_ENV, "INFERLANE_JOBS_STORE": store_url}
    for server in _serve(jobs_repo, folder / "server.log", env=env):
        yield AcceptServer(server, store_url, env)


@pytest.fixture(scope="module")
def main_server(jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("main")
    (folder / "local").mkdir()
    env = {"INFERLANE_JOBS_MAX_ATTEMPTS": "3", "INFERLANE_JOBS_RETRY_BACKOFF_S": "0.05",
           "INFERLANE_JOBS_LOCAL_ROOT": str(folder / "local"), "INFERLANE_JOBS_CALLBACK_SECRET": SECRET,
           "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true"}
    yield from _serve(jobs_repo, folder / "server.log", env=env)


@pytest.fixture
def main_client(main_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_server.url, timeout=30) as c:
        yield c


def local_root(server: Server) -> Path:
    return server.log.parent / "local"


@pytest.fixture(scope="module")
def callback_repo(jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """slow and boom only: a server of its own starts in a second."""
    repo = tmp_path_factory.mktemp("callback-models")
    for name in ("slow", "boom"):
        shutil.copytree(jobs_repo / name, repo / name)
    return repo


@pytest.fixture
def own_server(callback_repo: Path, tmp_path: Path) -> Iterator[Server]:
    """main_server's settings in a server of this test's own, so that the test can stop it: once the
    server has exited, nothing is left that could send another callback."""
    env = {"INFERLANE_JOBS_MAX_ATTEMPTS": "3", "INFERLANE_JOBS_RETRY_BACKOFF_S": "0.05",
           "INFERLANE_JOBS_CALLBACK_SECRET": SECRET, "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true"}
    yield from _serve(callback_repo, tmp_path / "server.log", env=env)


@pytest.fixture
def own_client(own_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=own_server.url, timeout=30) as c:
        yield c


# --- a crashed or stalled worker loses nothing and finishes nothing twice ------------------------

def test_killed_and_stalled_workers_lose_no_job_and_complete_each_once(
        accept_server: AcceptServer, worker_repo: Path, tmp_path: Path, receiver: HttpReceiver) -> None:
    """40 jobs on a slow model. Worker A is SIGKILLed while it runs jobs; worker B takes over and is
    frozen (SIGSTOP) while it runs jobs; worker C takes over B's jobs once their leases (2 s) run
    out and finishes everything; then B wakes up and tries to complete the jobs it had: the store
    must refuse (fencing). Every job ends succeeded, with the right result, completed once."""
    srv, url, env = accept_server.server, accept_server.store_url, accept_server.env
    workers: list[Worker] = []
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            a = start_worker(worker_repo, url, env, tmp_path / "worker-a.log")
            workers.append(a)
            a.wait_ready()
            ids = [submit(c, "slowjob", {**slow_body(i), "callback_url": f"{receiver.url}/done"})["id"]
                   for i in range(40)]
            x_of = {job_id: i for i, job_id in enumerate(ids)}

            def running() -> list[dict[str, Any]]:
                return listing(c, status="running", model="slowjob")

            wait_until(lambda: len(running()) > 0, "worker A to run jobs", 30)
            a.proc.kill()
            a.proc.wait()
            t_kill = time.time()
            orphans_a = {j["id"] for j in running()}  # A is dead: these are the jobs it held
            done_by_a = {j["id"] for j in listing(c, status="succeeded", model="slowjob")}
            assert orphans_a, "worker A held no job when killed"
            assert len(done_by_a) < 40 - 8, "worker A finished too much before it was killed"

            b = start_worker(worker_repo, url, env, tmp_path / "worker-b.log")
            workers.append(b)
            b.wait_ready()
            for _ in range(20):
                wait_until(lambda: any(j["started_at"] > t_kill for j in running()), "worker B to run jobs", 30)
                freeze(b, url)
                orphans_b = {j["id"] for j in running() if j["started_at"] > t_kill}  # B's, now frozen
                if orphans_b:
                    break
                os.kill(b.proc.pid, signal.SIGCONT)  # it had just finished its jobs: try again
            assert orphans_b

            cw = start_worker(worker_repo, url, env, tmp_path / "worker-c.log")
            workers.append(cw)
            cw.wait_ready()
            jobs = wait_final(c, ids, timeout=90)

            os.kill(b.proc.pid, signal.SIGCONT)  # B finishes its stale batch and tries to complete
            wait_until(lambda: b.outcomes()["lost_lease"] >= len(orphans_b), "worker B's fenced completes", 30)
            # Only the jobs finished by a live worker produce callbacks; A's may have died with it.
            expected_callbacks = set(ids) - done_by_a
            wait_until(lambda: {call.doc()["id"] for call in list(receiver.requests)} >= expected_callbacks,
                       "a callback for every job finished by B or C", 30)
            b_outcomes, c_outcomes = b.outcomes(), cw.outcomes()
            # Every worker exits (B and C drain, A is dead): nothing is left that could complete a job
            # or send a callback, so the job records and the receiver's calls read from here on are
            # final. (The receiver records a call before answering it.)
            for w in workers:
                w.stop()
            jobs_after = wait_final(c, ids, timeout=5)
    finally:
        for w in workers:
            w.stop()
    for w in workers[1:]:
        assert w.proc.returncode == 0, w.log.read_text()

    # Every job succeeded, with its own input's answer, and its state no longer changes (only its
    # callback's progress does, recorded on the job).
    def outcome(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k not in ("callback", "updated_at")}

    assert {i: outcome(j) for i, j in jobs_after.items()} == {i: outcome(j) for i, j in jobs.items()}
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", job
        assert job["error"] is None
        assert job["result"]["model_version"] == "1"
        (y,) = job["result"]["outputs"]
        assert y["name"] == "y" and y["shape"] == [1, 4]
        assert y["data"] == [2.0 * v for v in slow_body(x_of[job_id])["inputs"][0]["data"]]
        # One attempt, plus one for each time the worker holding it died or stalled.
        assert job["attempts"] == 1 + (job_id in orphans_a) + (job_id in orphans_b), (job, orphans_a, orphans_b)
        assert job["attempts"] <= job["max_attempts"]
    assert all(jobs[j]["attempts"] >= 2 for j in orphans_a)  # 2, or 3 if B then stalled on it too

    # Completed exactly once: B's completes of the jobs C took over were refused (fenced), the
    # successful completes of B and C add up to the jobs A had not finished, and nobody got two
    # callbacks for one job.
    assert b_outcomes["lost_lease"] == len(orphans_b)
    assert b_outcomes["succeeded"] + c_outcomes["succeeded"] == 40 - len(done_by_a)
    assert b.log.read_text().count("result discarded, the lease was taken over") == len(orphans_b)
    per_job = Counter(call.doc()["id"] for call in receiver.requests)
    assert set(per_job) <= set(ids)
    assert max(per_job.values()) == 1, per_job
    assert set(per_job) >= expected_callbacks
    for call in receiver.requests:
        doc = call.doc()
        assert call.path == "/done" and "Inferlane-Signature" not in call.headers  # no secret configured
        assert doc["status"] == "succeeded" and doc["result"] == jobs[doc["id"]]["result"]
        assert doc["attempts"] == jobs[doc["id"]]["attempts"]


# --- idempotency and cancel ----------------------------------------------------------------------

def test_idempotency_key_returns_the_same_job(accept_server: AcceptServer) -> None:
    key = uuid.uuid4().hex
    rows = synthetic_transactions(2, seed=11)[0]
    with httpx.Client(base_url=accept_server.server.url, timeout=30) as c:
        first = c.post("/v2/models/fraud/jobs", content=orjson.dumps(fraud_body(rows[:1])),
                       headers={**JSON, "Idempotency-Key": key})
        again = c.post("/v2/models/fraud/jobs", content=orjson.dumps(fraud_body(rows[:1])),
                       headers={**JSON, "Idempotency-Key": key})
        # The key names the job, whatever the body: a retried submit never makes a second job.
        other_body = c.post("/v2/models/fraud/jobs", content=orjson.dumps(fraud_body(rows[1:])),
                            headers={**JSON, "Idempotency-Key": key})
        other_key = submit(c, "fraud", fraud_body(rows[:1]), key=uuid.uuid4().hex)
        listed = listing(c, model="fraud")
    assert first.status_code == again.status_code == other_body.status_code == 202
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == other_body.headers["idempotent-replayed"] == "true"
    assert first.json()["id"] == again.json()["id"] == other_body.json()["id"] != other_key["id"]
    assert again.headers["location"] == first.headers["location"]
    assert [j["id"] for j in listed if j["idempotency_key"] == key] == [first.json()["id"]]


def test_cancel_a_queued_job(accept_server: AcceptServer) -> None:
    rows = synthetic_transactions(1, seed=12)[0]
    with httpx.Client(base_url=accept_server.server.url, timeout=30) as c:
        job = submit(c, "fraud", fraud_body(rows))  # no worker serves fraud here: it stays queued
        assert job["status"] == "queued"
        r = c.delete(f"/v2/jobs/{job['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None
        assert c.get(f"/v2/jobs/{job['id']}").json()["status"] == "cancelled"
        assert job["id"] in {j["id"] for j in listing(c, status="cancelled")}
        # Cancelling again is idempotent (a client retrying a lost answer): the same cancelled job.
        again = c.delete(f"/v2/jobs/{job['id']}")
        assert again.status_code == 200 and again.json() == r.json()
        missing = c.delete(f"/v2/jobs/{uuid.uuid4().hex}")
        assert missing.status_code == 404
        assert c.get(f"/v2/jobs/{uuid.uuid4().hex}").status_code == 404


def test_cancel_a_running_or_finished_job_is_a_conflict(main_client: httpx.Client) -> None:
    job = submit(main_client, "sleepy", slow_body(1))  # 1 s per batch
    wait_until(lambda: main_client.get(f"/v2/jobs/{job['id']}").json()["status"] != "queued", "the job to start", 10)
    r = main_client.delete(f"/v2/jobs/{job['id']}")
    assert r.status_code == 409, r.text
    assert "only queued jobs can be cancelled" in r.json()["error"]
    done = wait_final(main_client, [job["id"]])[job["id"]]
    assert done["status"] == "succeeded" and done["attempts"] == 1
    r = main_client.delete(f"/v2/jobs/{job['id']}")
    assert r.status_code == 409 and "succeeded" in r.json()["error"]
    assert main_client.get(f"/v2/jobs/{job['id']}").json() == done


# --- retries, dead letter, invalid input ---------------------------------------------------------

def test_failing_model_is_dead_lettered_without_retries(own_server: Server, own_client: httpx.Client,
                                                      receiver: HttpReceiver) -> None:
    job = submit(own_client, "boom", {**slow_body(1), "callback_url": f"{receiver.url}/boom"})
    t0 = time.monotonic()
    done = wait_final(own_client, [job["id"]])[job["id"]]
    assert done["status"] == "failed"
    assert (done["attempts"], done["max_attempts"]) == (1, 3)  # a model error is permanent: no retry
    assert "boom: this model always fails" in done["error"]
    assert done["result"] is None and done["finished_at"] is not None
    assert time.monotonic() - t0 < 10
    assert done["id"] in {j["id"] for j in listing(own_client, status="failed", model="boom")}
    wait_until(lambda: len(receiver.requests) >= 1, "the failure callback", 10)
    # The server exits (SIGTERM): nothing is left that could send a second callback, so the
    # receiver's calls are final. (The receiver records a call before answering it.)
    assert stop_process(own_server.proc) == 0
    (call,) = receiver.requests  # one callback, for the final outcome only (not per attempt)
    doc = call.doc()
    assert doc["id"] == job["id"] and doc["status"] == "failed" and doc["attempts"] == 1
    assert doc["error"] == done["error"]
    url = f"{receiver.url}{call.path}"
    assert verify_signature(call.headers["Inferlane-Signature"], call.body, SECRET.encode(), url, job["id"])
    assert call.headers["Inferlane-Job-Id"] == job["id"]


def test_invalid_input_is_refused_at_submit(main_client: httpx.Client) -> None:
    key = uuid.uuid4().hex
    bad_name = {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    bad_shape = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
    for doc in (bad_name, bad_shape, {"inputs": "x"}, {}, {**slow_body(1), "input_uri": "x.json"}):
        r = main_client.post("/v2/models/slow/jobs", content=orjson.dumps(doc),
                             headers={**JSON, "Idempotency-Key": key})
        assert r.status_code == 400, (doc, r.text)
    assert "nope" in main_client.post("/v2/models/slow/jobs", content=orjson.dumps(bad_name),
                                      headers=JSON).json()["error"]
    assert main_client.post("/v2/models/slow/jobs", content=b"{not json", headers=JSON).status_code == 400
    assert main_client.post("/v2/models/nosuch/jobs", content=orjson.dumps(slow_body(1)),
                            headers=JSON).status_code == 404
    # Nothing was stored under the key: the first valid submit creates the job.
    r = main_client.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)),
                         headers={**JSON, "Idempotency-Key": key})
    assert r.status_code == 202 and "idempotent-replayed" not in r.headers


def test_invalid_request_behind_input_uri_fails_after_one_attempt(main_server: Server,
                                                                  main_client: httpx.Client) -> None:
    root = local_root(main_server)
    (root / "bad.json").write_bytes(orjson.dumps(
        {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}))
    (root / "garbage.json").write_bytes(b"{this is not json")
    (root / "good.json").write_bytes(orjson.dumps(slow_body(3)))
    bad = submit(main_client, "slow", {"input_uri": "bad.json"})
    garbage = submit(main_client, "slow", {"input_uri": str(root / "garbage.json")})
    missing = submit(main_client, "slow", {"input_uri": "missing.json"})
    outside = submit(main_client, "slow", {"input_uri": "../outside.json"})
    good = submit(main_client, "slow", {"input_uri": "good.json", "output_uri": "results"})
    jobs = wait_final(main_client, [bad["id"], garbage["id"], missing["id"], outside["id"], good["id"]])
    for job, words in ((bad, "nope"), (garbage, "JSON"), (missing, "not found"), (outside, "outside")):
        done = jobs[job["id"]]
        assert done["status"] == "failed", done
        assert done["attempts"] == 1, done  # retrying cannot fix the input: no second attempt
        assert words in done["error"], done
    ok = jobs[good["id"]]
    assert ok["status"] == "succeeded" and ok["attempts"] == 1 and ok["result"] is None
    written = Path(ok["output_uri"])
    assert written.resolve() == (root / "results" / f"{good['id']}.json").resolve()
    assert orjson.loads(written.read_bytes())["outputs"][0]["data"] == [6.0, 6.5, 7.0, 7.5]


# --- callbacks -----------------------------------------------------------------------------------

def test_callback_is_signed_and_retried_until_delivered(own_server: Server, own_client: httpx.Client) -> None:
    receiver = HttpReceiver(fail_first=2)  # HTTP 500 twice, then 200
    try:
        job = submit(own_client, "slow", {**slow_body(5), "callback_url": f"{receiver.url}/hook?team=a"})
        assert job["callback_url"] == f"{receiver.url}/hook?team=a"
        done = wait_final(own_client, [job["id"]])[job["id"]]
        wait_until(lambda: len(receiver.requests) >= 3, "three callback attempts", 15)
        # And no fourth: the third was answered 200. The server exits (SIGTERM), so nothing is left
        # that could send one; the receiver records a call before answering it.
        assert stop_process(own_server.proc) == 0
        calls = list(receiver.requests)
    finally:
        receiver.close()
    assert len(calls) == 3
    assert len({c.body for c in calls}) == 1  # the same outcome each time
    for call in calls:
        assert call.path == "/hook?team=a"
        assert call.headers["Content-Type"] == "application/json"
        url, sig = f"{receiver.url}/hook?team=a", call.headers["Inferlane-Signature"]
        assert verify_signature(sig, call.body, SECRET.encode(), url, job["id"])
        assert not verify_signature(sig, call.body, b"wrong secret", url, job["id"])
        assert not verify_signature(sig, call.body + b" ", SECRET.encode(), url, job["id"])
        # Signed for this receiver and this job: not replayable to another URL or as another job.
        assert not verify_signature(sig, call.body, SECRET.encode(), f"{receiver.url}/other", job["id"])
        assert not verify_signature(sig, call.body, SECRET.encode(), url, "0" * 32)
    doc = calls[0].doc()
    assert doc == {"id": job["id"], "model": "slow", "attempts": 1, "status": "succeeded",
                   "model_version": "1", "result": done["result"]}
    assert done["result"]["outputs"][0]["data"] == [10.0, 10.5, 11.0, 11.5]


# --- TTL expiry and private callback targets -----------------------------------------------------

@pytest.fixture(scope="module")
def ttl_server(jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"INFERLANE_JOBS_TTL_S": "1", "INFERLANE_JOBS_EXPIRE_INTERVAL_S": "0.2"}
    yield from _serve(jobs_repo, tmp_path_factory.mktemp("ttl") / "server.log", env=env)


def test_results_expire_after_the_ttl(ttl_server: Server) -> None:
    with httpx.Client(base_url=ttl_server.url, timeout=30) as c:
        job = submit(c, "slow", slow_body(2))
        done = wait_final(c, [job["id"]])[job["id"]]
        assert done["status"] == "succeeded" and done["result"] is not None
        assert done["expires_at"] == pytest.approx(done["finished_at"] + 1.0)
        wait_until(lambda: c.get(f"/v2/jobs/{job['id']}").json()["status"] == "expired", "expiry", 10)
        gone = c.get(f"/v2/jobs/{job['id']}").json()
        expired_ids = {j["id"] for j in listing(c, status="expired")}
        assert c.delete(f"/v2/jobs/{job['id']}").status_code == 409
    assert gone["result"] is None and gone["error"] is None and gone["attempts"] == 1
    assert gone["finished_at"] == done["finished_at"]
    assert time.time() > done["expires_at"]
    assert job["id"] in expired_ids


@pytest.mark.parametrize("target", ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/hook",
                                    "http://[::1]:8080/hook", "http://169.254.169.254/latest/meta-data",
                                    "ftp://example.com/hook", "http://user:pw@example.com/hook"])
def test_callback_to_a_private_address_is_refused(ttl_server: Server, target: str) -> None:
    key = uuid.uuid4().hex
    with httpx.Client(base_url=ttl_server.url, timeout=30) as c:
        r = c.post("/v2/models/slow/jobs", content=orjson.dumps({**slow_body(1), "callback_url": target}),
                   headers={**JSON, "Idempotency-Key": key})
        assert r.status_code == 400, r.text
        assert "callback_url" in r.json()["error"]
        assert key not in {j["idempotency_key"] for j in listing(c)}  # nothing stored


# --- the same answer as the online lane ----------------------------------------------------------

def test_job_result_equals_the_online_answer(main_client: httpx.Client) -> None:
    rows = synthetic_transactions(8, seed=21)[0]
    body = fraud_body(rows)
    job = submit(main_client, "fraud", body)
    done = wait_final(main_client, [job["id"]])[job["id"]]
    online = main_client.post("/v2/models/fraud/infer", content=orjson.dumps(body), headers=JSON)
    assert online.status_code == 200, online.text
    assert done["status"] == "succeeded"
    result, answer = done["result"], online.json()
    assert result["model_version"] == answer["model_version"] == "1"
    assert result["outputs"] == answer["outputs"]
    (probs,) = (o for o in result["outputs"] if o["name"] == "probabilities")
    (online_probs,) = (o for o in answer["outputs"] if o["name"] == "probabilities")
    a = np.asarray(probs["data"], dtype=np.float32)
    b = np.asarray(online_probs["data"], dtype=np.float32)
    assert a.shape == (16,) and a.tobytes() == b.tobytes()  # bit-identical float32


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_submit_wait_status_list_cancel(main_server: Server, tmp_path: Path) -> None:
    url = main_server.url
    request = tmp_path / "request.json"
    request.write_bytes(orjson.dumps(fraud_body(synthetic_transactions(2, seed=31)[0])))
    key = uuid.uuid4().hex

    sub = run_cli("submit", "fraud", str(request), "--url", url, "--idempotency-key", key)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert len(job_id) == 32 and int(job_id, 16) >= 0
    again = run_cli("submit", "fraud", str(request), "--url", url, "--idempotency-key", key)
    assert (again.returncode, again.stdout.strip()) == (0, job_id)

    waited = run_cli("wait", job_id, "--url", url, "--timeout", "60")
    assert waited.returncode == 0, waited.stderr
    job = orjson.loads(waited.stdout)
    assert job["id"] == job_id and job["status"] == "succeeded" and job["result"]["outputs"]

    status = run_cli("status", job_id, "--url", url)
    assert status.returncode == 0 and orjson.loads(status.stdout) == job

    listed = run_cli("list", "--url", url, "--model", "fraud", "--status", "succeeded")
    assert listed.returncode == 0
    (line,) = [ln for ln in listed.stdout.splitlines() if ln.startswith(job_id)]
    assert "succeeded" in line and "attempts 1/3" in line

    cancel = run_cli("cancel", job_id, "--url", url)
    assert cancel.returncode == 2 and "HTTP 409" in cancel.stderr

    no_file = run_cli("submit", "slow", str(tmp_path / "nope.json"), "--url", url)
    assert no_file.returncode == 2 and "cannot read" in no_file.stderr

    failing = tmp_path / "boom.json"
    failing.write_bytes(orjson.dumps(slow_body(1)))
    boom = run_cli("submit", "boom", str(failing), "--url", url)
    assert boom.returncode == 0, boom.stderr
    boom_wait = run_cli("wait", boom.stdout.strip(), "--url", url, "--timeout", "60")
    assert boom_wait.returncode == 3 and orjson.loads(boom_wait.stdout)["status"] == "failed"

    wrong = run_cli("submit", "slow", str(request), "--url", url)  # fraud's input, slow's model
    assert wrong.returncode == 2 and "HTTP 400" in wrong.stderr
    unknown = run_cli("status", uuid.uuid4().hex, "--url", url)
    assert unknown.returncode == 2 and "HTTP 404" in unknown.stderr
    down = run_cli("status", job_id, "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "cannot talk to the server" in down.stderr
    assert "Traceback" not in down.stderr + unknown.stderr + wrong.stderr


def test_cli_wait_times_out_and_cancel_cancels(accept_server: AcceptServer, tmp_path: Path) -> None:
    url = accept_server.server.url
    request = tmp_path / "request.json"
    request.write_bytes(orjson.dumps(fraud_body(synthetic_transactions(1, seed=32)[0])))
    sub = run_cli("submit", "fraud", str(request), "--url", url)  # stays queued: no worker for fraud
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    waited = run_cli("wait", job_id, "--url", url, "--timeout", "0.3")
    assert waited.returncode == 1 and "still queued" in waited.stderr
    cancel = run_cli("cancel", job_id, "--url", url)
    assert cancel.returncode == 0 and orjson.loads(cancel.stdout)["status"] == "cancelled"
    waited = run_cli("wait", job_id, "--url", url, "--timeout", "5")
    assert waited.returncode == 3 and orjson.loads(waited.stdout)["status"] == "cancelled"


# --- callbacks survive a restart; large results on default settings; API keys over HTTP -----------

def test_a_pending_callback_is_delivered_after_a_restart(callback_repo: Path, tmp_path: Path) -> None:
    """The job finishes while its receiver fails (HTTP 503); the server stops with the callback still
    pending; a new server on the same store delivers it, and the job record says so."""
    codes = [503]  # the receiver's answer; changed to 200 once the first server has stopped
    receiver = HttpReceiver(codes)
    env = {"INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'jobs.db'}", "INFERLANE_JOBS_CALLBACK_ALLOW_PRIVATE": "true"}
    try:
        first = _serve(callback_repo, tmp_path / "first.log", env=env)
        server = next(first)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            job = submit(c, "slow", {**slow_body(4), "callback_url": f"{receiver.url}/late"})
            done = wait_final(c, [job["id"]])[job["id"]]
            assert done["status"] == "succeeded"
            wait_until(lambda: receiver.count >= 1, "a first (refused) callback attempt", 15)
            assert c.get(f"/v2/jobs/{job['id']}").json()["callback"]["status"] == "pending"
        first.close()  # SIGTERM: the delivery in flight is given back, still pending
        codes[0] = 200
        tried = receiver.count
        for server in _serve(callback_repo, tmp_path / "second.log", env=env):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                wait_until(lambda: c.get(f"/v2/jobs/{job['id']}").json()["callback"]["status"] == "delivered",
                           "the callback delivered by the second server", 30)
                after = c.get(f"/v2/jobs/{job['id']}").json()
    finally:
        receiver.close()
    assert receiver.count > tried
    assert after["callback"]["attempts"] >= 1 and after["callback"]["error"] is None
    last = receiver.requests[-1].doc()
    assert last["id"] == job["id"] and last["status"] == "succeeded" and last["result"] == done["result"]


def test_a_2_mib_result_is_written_to_the_results_folder(tmp_path: Path) -> None:
    """Without INFERLANE_JOBS_LOCAL_ROOT (the default), a result over 1 MiB still succeeds: it goes to
    the server's own results folder, and the job shows where."""
    repo = tmp_path / "repo"
    write_slow_model(repo, "wide", delay=0.0, max_batch_size=90_000, max_queue_size=4)
    results = tmp_path / "results"
    rows = 80_000
    data = [float(i % 1000) + 0.125 for i in range(rows * 4)]
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 4], "data": data}]}
    env = {"INFERLANE_JOBS_RESULTS_URI": str(results)}
    for server in _serve(repo, tmp_path / "server.log", env=env):
        with httpx.Client(base_url=server.url, timeout=60) as c:
            job = submit(c, "wide", doc)
            done = wait_final(c, [job["id"]])[job["id"]]
    assert done["status"] == "succeeded", done
    assert done["result"] is None and Path(done["output_uri"]).parent.resolve() == results.resolve()
    written = Path(done["output_uri"]).read_bytes()
    assert len(written) > 2 << 20
    assert orjson.loads(written)["outputs"][0]["data"][:4] == [0.25, 2.25, 4.25, 6.25]


def test_api_keys_over_http_and_a_public_bind_without_keys(jobs_repo: Path, tmp_path: Path) -> None:
    keys = "acme:acme-key-0123456789, umbrella:umbrella-key-0123456789"
    a, b = {"Authorization": "Bearer acme-key-0123456789"}, {"Authorization": "Bearer umbrella-key-0123456789"}
    for server in _serve(jobs_repo, tmp_path / "server.log", env={"INFERLANE_API_KEYS": keys}):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)), headers=JSON).status_code == 401
            r = c.post("/v2/models/slow/jobs", content=orjson.dumps(slow_body(1)), headers={**JSON, **a})
            assert r.status_code == 202, r.text
            url = f"/v2/jobs/{r.json()['id']}"
            assert c.get(url, headers=b).status_code == 404
            assert c.get("/v2/jobs", headers=b).json()["jobs"] == []
            wait_until(lambda u=url: c.get(u, headers=a).json()["status"] == "succeeded", "the job", 30)
    assert "acme-key-0123456789" not in (tmp_path / "server.log").read_text()
    port = free_port()
    refused = subprocess.run([sys.executable, "-m", "inferlane", "serve", str(jobs_repo), "--host", "0.0.0.0",
                              "--port", str(port)], capture_output=True, text=True, timeout=60, check=False,
                             env={**os.environ, "INFERLANE_JOBS_STORE": f"sqlite:///{tmp_path / 'open.db'}"})
    assert refused.returncode == 2, refused.stderr
    assert "INFERLANE_API_KEYS" in refused.stderr and "INFERLANE_JOBS_OPEN" in refused.stderr
    assert "Traceback" not in refused.stderr
